package latentops.access_test

import data.latentops.access
import rego.v1

submitter := {"kind": "user", "user_id": 1, "active": true, "memberships": [{"team": "design", "role": "submitter"}]}

officer := {"kind": "user", "user_id": 3, "active": true, "memberships": [{"team": "compliance", "role": "compliance_officer"}]}

admin := {"kind": "user", "user_id": 2, "active": true, "memberships": [{"team": "ops", "role": "admin"}]}

disabled := {"kind": "user", "user_id": 4, "active": false, "memberships": [{"team": "design", "role": "submitter"}]}

console := {"kind": "console", "user_id": null, "memberships": []}

rule_ids(inp) := {v.rule_id | some v in access.evaluate(inp).deny}

cases := [
	{"in": {"action": "jobs.submit", "subject": submitter}, "ids": set()},
	{"in": {"action": "jobs.submit", "subject": officer}, "ids": {"access.role"}},
	{"in": {"action": "audit.read", "subject": officer}, "ids": set()},
	{"in": {"action": "audit.read", "subject": submitter}, "ids": {"access.role"}},
	{"in": {"action": "users.manage", "subject": admin}, "ids": set()},
	{"in": {"action": "users.manage", "subject": console}, "ids": set()},
	{"in": {"action": "users.manage", "subject": submitter}, "ids": {"access.role"}},
	{"in": {"action": "jobs.read", "subject": disabled}, "ids": {"access.inactive"}},
	{"in": {"action": "fly", "subject": admin}, "ids": {"access.unknown_action"}},
	{"in": {"action": "jobs.read", "subject": submitter, "token": {"scopes": ["read"]}}, "ids": set()},
	{"in": {"action": "jobs.submit", "subject": submitter, "token": {"scopes": ["read"]}}, "ids": {"access.scope"}},
	{"in": {"action": "jobs.submit", "subject": submitter, "token": {"scopes": ["*"]}}, "ids": set()},
	{"in": {"action": "tokens.manage", "subject": submitter, "token": {"scopes": ["jobs", "read"]}}, "ids": {"access.scope"}},
	{"in": {"action": "tokens.manage", "subject": submitter, "token": null}, "ids": set()},
	{"in": {"action": "jobs.read", "subject": submitter, "resource": {"team": "design"}}, "ids": set()},
	{"in": {"action": "jobs.read", "subject": submitter, "resource": {"team": "marketing"}}, "ids": {"access.team"}},
	{"in": {"action": "jobs.read", "subject": submitter, "resource": {"team": null}}, "ids": {"access.team"}},
	{"in": {"action": "models.read", "subject": submitter, "resource": {"team": "marketing", "granted": true}}, "ids": set()},
	{"in": {"action": "jobs.read", "subject": admin, "resource": {"team": "marketing"}}, "ids": set()},
	{"in": {"action": "jobs.read", "subject": officer, "resource": {"team": null}}, "ids": set()},
	{"in": {"action": "copyright.manage", "subject": officer}, "ids": set()},
	{"in": {"action": "copyright.manage", "subject": admin}, "ids": set()},
	{"in": {"action": "copyright.manage", "subject": submitter}, "ids": {"access.role"}},
	{"in": {"action": "copyright.read", "subject": submitter}, "ids": {"access.role"}},
	{"in": {"action": "copyright.manage", "subject": officer, "token": {"scopes": ["read"]}}, "ids": {"access.scope"}},
	{"in": {"action": "screen", "subject": submitter, "token": {"scopes": ["generate"]}}, "ids": set()},
	{"in": {"action": "screen", "subject": submitter, "token": {"scopes": ["read"]}}, "ids": {"access.scope"}},
	{"in": {"action": "screen", "subject": submitter, "resource": {"team": "marketing"}}, "ids": {"access.team"}},
	{"in": {"action": "policies.bundle", "subject": submitter, "token": {"scopes": ["policy:bundle"]}}, "ids": set()},
	{"in": {"action": "policies.bundle", "subject": admin, "token": {"scopes": ["read", "admin"]}}, "ids": {"access.scope"}},
	{"in": {"action": "jobs.read", "subject": submitter, "token": {"scopes": ["policy:bundle"]}}, "ids": {"access.scope"}},
	{"in": {"action": "policies.data.read", "subject": officer}, "ids": set()},
	{"in": {"action": "policies.data.read", "subject": submitter}, "ids": {"access.role"}},
	{"in": {"action": "policies.data.manage", "subject": admin}, "ids": set()},
	{"in": {"action": "policies.data.manage", "subject": officer}, "ids": set()},
	{"in": {"action": "policies.data.manage", "subject": submitter}, "ids": {"access.role"}},
	{"in": {"action": "policies.data.manage", "subject": admin, "token": {"scopes": ["read"]}}, "ids": {"access.scope"}},
	{"in": {"action": "screening.read", "subject": officer, "token": {"scopes": ["read"]}}, "ids": set()},
	{"in": {"action": "screening.read", "subject": submitter}, "ids": {"access.role"}},
	{"in": {"action": "screening.calibrate", "subject": officer}, "ids": set()},
	{"in": {"action": "screening.calibrate", "subject": submitter}, "ids": {"access.role"}},
]

test_access_decision_table if {
	every c in cases {
		rule_ids(c["in"]) == c.ids
	}
}

test_submitter_cannot_read_another_teams_job_denied if {
	not access.evaluate({"action": "jobs.read", "subject": submitter, "resource": {"team": "marketing"}}).allow
}

test_read_token_cannot_submit_denied if {
	not access.evaluate({"action": "jobs.submit", "subject": submitter, "token": {"scopes": ["read"]}}).allow
}
