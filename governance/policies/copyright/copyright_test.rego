package latentops.copyright_test

import data.latentops.copyright
import rego.v1

acme := {"reference_id": 7, "owner": "Acme Pictures", "method": "orb", "score": 0.4}

other := {"reference_id": 9, "owner": "Globex", "method": "phash", "score": 0.95}

rule_ids(inp) := {v.rule_id | some v in copyright.evaluate(inp).deny}

use(kind, matches, licences) := {"kind": kind, "team": "design", "matches": matches, "licences": licences}

cases := [
	{"in": use("output", [], []), "ids": set()},
	{"in": use("output", [acme], []), "ids": {"copyright.protected_work"}},
	{"in": use("training_upload", [acme], []), "ids": {"copyright.protected_work"}},
	{"in": use("training_upload", [acme], [{"owner": "Acme Pictures", "reference_id": null}]), "ids": set()},
	{"in": use("training_upload", [acme], [{"owner": "Acme Pictures", "reference_id": 8}]), "ids": {"copyright.protected_work"}},
	{"in": use("output", [acme], [{"owner": "someone", "reference_id": 7}]), "ids": set()},
	{"in": use("output", [acme, other], [{"owner": "Acme Pictures", "reference_id": null}]), "ids": {"copyright.protected_work"}},
	{"in": use("printing", [], []), "ids": {"copyright.unknown_kind"}},
]

test_copyright_decision_table if {
	every c in cases {
		rule_ids(c["in"]) == c.ids
	}
}

test_unlicensed_match_reason_names_work_and_owner if {
	some v in copyright.evaluate(use("output", [acme], [])).deny
	contains(v.reason, "protected work 7 of Acme Pictures")
}
