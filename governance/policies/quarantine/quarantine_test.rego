package latentops.quarantine_test

import data.latentops.quarantine
import rego.v1

officer := {"kind": "user", "user_id": 3, "memberships": [{"team": "compliance", "role": "compliance_officer"}]}

submitter := {"kind": "user", "user_id": 1, "memberships": [{"team": "design", "role": "submitter"}]}

admin := {"kind": "user", "user_id": 2, "memberships": [{"team": "ops", "role": "admin"}]}

console := {"kind": "console", "user_id": null, "memberships": []}

rule_ids(inp) := {v.rule_id | some v in quarantine.evaluate(inp).deny}

cases := [
	{"in": {"action": "view", "subject": officer}, "ids": set()},
	{"in": {"action": "view", "subject": submitter}, "ids": {"quarantine.role"}},
	{"in": {"action": "view", "subject": admin}, "ids": {"quarantine.role"}},
	{"in": {"action": "view", "subject": console}, "ids": set()},
	{"in": {"action": "release", "subject": officer, "reason": "false positive: a red apple"}, "ids": set()},
	{"in": {"action": "release", "subject": officer, "reason": "  "}, "ids": {"quarantine.reason_required"}},
	{"in": {"action": "reject", "subject": officer}, "ids": {"quarantine.reason_required"}},
	{"in": {"action": "reject", "subject": submitter, "reason": "mine"}, "ids": {"quarantine.role"}},
	{"in": {"action": "purge", "subject": officer, "reason": "x"}, "ids": {"quarantine.unknown_action"}},
]

test_quarantine_decision_table if {
	every c in cases {
		rule_ids(c["in"]) == c.ids
	}
}
