package latentops.jobs_test

import data.latentops.jobs
import rego.v1

alice := {"kind": "user", "user_id": 1, "memberships": [{"team": "design", "role": "submitter"}]}

dora := {"kind": "user", "user_id": 4, "memberships": [{"team": "design", "role": "compliance_officer"}]}

model := {"name": "digits", "sensitivity": "internal", "owner_team": "research"}

grants := [{"action": "use", "team": "design", "user_id": null}]

base := {
	"action": "fine_tune", "team": "design", "subject": alice, "model": model, "grants": grants,
	"params": {"steps": 500, "resolution": 512, "rank": 8, "batch": 2},
	"uploads": {"count": 5, "attestation": {"licence": true, "consent": true}},
	"usage": {"concurrent_jobs": 0, "gpu_hours": 1},
}

rule_ids(overrides) := {v.rule_id | some v in jobs.evaluate(object.union(base, overrides)).deny}

test_submitter_fine_tune_within_limits_allowed if {
	jobs.evaluate(base).allow == true
}

limit_cases := [
	{"params": {"steps": 2001, "resolution": 512, "rank": 8, "batch": 2}, "ids": {"jobs.limit.steps"}},
	{"params": {"steps": 500, "resolution": 1024, "rank": 8, "batch": 2}, "ids": {"jobs.limit.resolution"}},
	{"params": {"steps": 500, "resolution": 512, "rank": 32, "batch": 2}, "ids": {"jobs.limit.rank"}},
	{"params": {"steps": 500, "resolution": 512, "rank": 8, "batch": 5}, "ids": {"jobs.limit.batch"}},
	{"params": {"steps": 2000, "resolution": 768, "rank": 16, "batch": 4}, "ids": set()},
]

test_submitter_limits_table if {
	every c in limit_cases {
		rule_ids({"params": c.params}) == c.ids
	}
}

test_role_without_fine_tune_denied if {
	rule_ids({"subject": dora}) == {"jobs.role"}
}

test_non_member_denied_by_role_and_grant if {
	outsider := {"kind": "user", "user_id": 9, "memberships": [{"team": "legal", "role": "submitter"}]}
	rule_ids({"subject": outsider}) == {"jobs.role", "models.no_grant"}
}

test_model_without_grant_denied if {
	rule_ids({"grants": []}) == {"models.no_grant"}
}

test_uploads_without_attestation_denied if {
	rule_ids({"uploads": {"count": 3, "attestation": {"licence": true, "consent": false}}}) == {"jobs.attestation_missing"}
	rule_ids({"uploads": {"count": 3}}) == {"jobs.attestation_missing"}
}

test_generate_needs_no_attestation if {
	rule_ids({"action": "generate", "uploads": {"count": 0}}) == set()
}

test_quota_table if {
	rule_ids({"usage": {"concurrent_jobs": 4, "gpu_hours": 1}}) == {"jobs.quota.concurrent_jobs"}
	rule_ids({"usage": {"concurrent_jobs": 0, "gpu_hours": 100}}) == {"jobs.quota.gpu_hours"}
}

test_unknown_job_action_denied if {
	"jobs.unknown_action" in rule_ids({"action": "mine_bitcoin"})
}
