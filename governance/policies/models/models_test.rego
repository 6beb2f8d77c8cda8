package latentops.models_test

import data.latentops.models
import rego.v1

alice := {"kind": "user", "user_id": 1, "memberships": [{"team": "design", "role": "submitter"}]}

bob := {"kind": "user", "user_id": 2, "memberships": [{"team": "research", "role": "data_scientist"}]}

carol := {"kind": "user", "user_id": 3, "memberships": [{"team": "platform", "role": "admin"}]}

console := {"kind": "console", "user_id": null, "memberships": []}

internal_model := {"name": "digits", "sensitivity": "internal", "owner_team": "research"}

restricted_model := {"name": "faces", "sensitivity": "restricted", "owner_team": "research"}

public_model := {"name": "open", "sensitivity": "public", "owner_team": null}

team_use := {"action": "use", "team": "design", "user_id": null}

bob_download := {"action": "download", "team": null, "user_id": 2}

rule_ids(inp) := {v.rule_id | some v in models.evaluate(inp).deny}

cases := [
	{"name": "team grant lets member use", "in": {"action": "use", "subject": alice, "model": internal_model, "grants": [team_use]}, "ids": set()},
	{"name": "use grant does not give download", "in": {"action": "download", "subject": alice, "model": internal_model, "grants": [team_use]}, "ids": {"models.no_grant"}},
	{"name": "no grant denies use", "in": {"action": "use", "subject": bob, "model": internal_model, "grants": [team_use]}, "ids": {"models.no_grant"}},
	{"name": "user download grant implies use", "in": {"action": "use", "subject": bob, "model": internal_model, "grants": [bob_download]}, "ids": set()},
	{"name": "public model usable without grant", "in": {"action": "use", "subject": alice, "model": public_model, "grants": []}, "ids": set()},
	{"name": "public model download needs grant", "in": {"action": "download", "subject": alice, "model": public_model, "grants": []}, "ids": {"models.no_grant"}},
	{"name": "restricted label refuses submitter even with grant", "in": {"action": "use", "subject": alice, "model": restricted_model, "grants": [team_use]}, "ids": {"models.sensitivity_role"}},
	{"name": "restricted label allows data scientist with grant", "in": {"action": "download", "subject": bob, "model": restricted_model, "grants": [bob_download]}, "ids": set()},
	{"name": "unknown label refused", "in": {"action": "use", "subject": bob, "model": {"name": "x", "sensitivity": "secret"}, "grants": [bob_download]}, "ids": {"models.unknown_sensitivity"}},
	{"name": "unknown action refused", "in": {"action": "fly", "subject": bob, "model": internal_model, "grants": []}, "ids": {"models.unknown_action"}},
]

test_access_decision_table if {
	every c in cases {
		rule_ids(c["in"]) == c.ids
	}
}

test_admin_may_grant if {
	models.evaluate({"action": "grant", "subject": carol, "model": internal_model, "grants": []}).allow == true
}

test_console_operator_may_grant if {
	models.evaluate({"action": "revoke", "subject": console, "model": internal_model, "grants": []}).allow == true
}

test_submitter_grant_denied_as_not_admin if {
	rule_ids({"action": "grant", "subject": alice, "model": internal_model, "grants": [team_use]}) == {"models.grant_not_admin"}
}

test_manage_grant_holder_may_grant if {
	manage := {"action": "manage", "team": "design", "user_id": null}
	models.evaluate({"action": "grant", "subject": alice, "model": internal_model, "grants": [manage]}).allow == true
}

test_admin_without_grant_may_not_download if {
	rule_ids({"action": "download", "subject": carol, "model": internal_model, "grants": []}) == {"models.no_grant"}
}
