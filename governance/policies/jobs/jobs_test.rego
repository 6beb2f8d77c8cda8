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
	"usage": {"queued_jobs": 0, "gpu_hours": 1},
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
	{"params": {"steps": 500, "resolution": 512, "rank": 8, "batch": 2, "processes": 3}, "ids": {"jobs.limit.processes"}},
	{"params": {"steps": 500, "resolution": 512, "rank": 8, "batch": 2, "processes": 2}, "ids": set()},
]

test_submitter_limits_table if {
	every c in limit_cases {
		rule_ids({"params": c.params}) == c.ids
	}
}

test_role_without_fine_tune_denied if {
	rule_ids({"subject": dora}) == {"jobs.role"}
}

# The grant cases pin what the label opens without a grant: that is editable data (a deployment
# may open internal models to every member), and these tests are about the grant rule itself.
closed := {"open_actions": []}

test_non_member_denied_by_role_and_grant if {
	outsider := {"kind": "user", "user_id": 9, "memberships": [{"team": "legal", "role": "submitter"}]}
	rule_ids({"subject": outsider}) == {"jobs.role", "models.no_grant"} with data.policy_data.models.sensitivity.internal as object.union(data.policy_data.models.sensitivity.internal, closed)
}

test_model_without_grant_denied if {
	rule_ids({"grants": []}) == {"models.no_grant"} with data.policy_data.models.sensitivity.internal as object.union(data.policy_data.models.sensitivity.internal, closed)
}

test_uploads_without_attestation_denied if {
	rule_ids({"uploads": {"count": 3, "attestation": {"licence": true, "consent": false}}}) == {"jobs.attestation_missing"}
	rule_ids({"uploads": {"count": 3}}) == {"jobs.attestation_missing"}
}

test_generate_needs_no_attestation if {
	rule_ids({"action": "generate", "uploads": {"count": 0}}) == set()
}

# The quotas in force (data, editable): the table follows them rather than the shipped values.
quota := data.policy_data.jobs.quotas["default"]

test_quota_table if {
	rule_ids({"usage": {"queued_jobs": quota.max_queued_jobs, "gpu_hours": 1}}) == {"jobs.quota.queued_jobs"}
	rule_ids({"usage": {"queued_jobs": quota.max_queued_jobs - 1, "gpu_hours": 0}}) == set()
	rule_ids({"usage": {"queued_jobs": 0, "gpu_hours": quota.max_gpu_hours}}) == {"jobs.quota.gpu_hours"}
}

gpu_reason(usage) := [v.reason | some v in jobs.evaluate(object.union(base, {"usage": usage})).deny; v.rule_id == "jobs.quota.gpu_hours"][0]

test_gpu_hours_refusal_names_the_period if {
	endswith(gpu_reason({"queued_jobs": 0, "gpu_hours": quota.max_gpu_hours, "period": "rolling_days:30"}), sprintf(" GPU-hours in the last 30 days; the quota is %v", [quota.max_gpu_hours]))
	contains(gpu_reason({"queued_jobs": 0, "gpu_hours": quota.max_gpu_hours, "period": "calendar_month"}), " GPU-hours this calendar month; ")
	contains(gpu_reason({"queued_jobs": 0, "gpu_hours": quota.max_gpu_hours}), " GPU-hours; the quota is ")
}

test_unknown_job_action_denied if {
	"jobs.unknown_action" in rule_ids({"action": "mine_bitcoin"})
}

ada := {"kind": "user", "user_id": 2, "memberships": [{"team": "design", "role": "admin"}]}

console := {"kind": "console", "memberships": []}

# Each row: who asks, for what priority (null: none), the priority the job gets, the rules it breaks.
priority_cases := [
	{"subject": alice, "priority": null, "gets": 0, "ids": set()},
	{"subject": alice, "priority": 4, "gets": 4, "ids": set()},
	{"subject": alice, "priority": 5, "gets": 4, "ids": {"jobs.priority"}},
	{"subject": ada, "priority": null, "gets": 5, "ids": set()},
	{"subject": ada, "priority": 9, "gets": 9, "ids": set()},
	{"subject": ada, "priority": 10, "gets": 9, "ids": {"jobs.priority"}},
	{"subject": ada, "priority": -1, "gets": -1, "ids": {"jobs.priority"}},
	{"subject": ada, "priority": 2.5, "gets": 2.5, "ids": {"jobs.priority"}},
	{"subject": console, "priority": null, "gets": 5, "ids": set()},
]

queue := {"action": "queue", "team": "design", "subject": alice, "priority": null, "usage": {"queued_jobs": 0, "gpu_hours": 0}}

priority_row_ok(c) if {
	decided := jobs.evaluate(object.union(queue, {"subject": c.subject, "priority": c.priority}))
	decided.priority == c.gets
	{v.rule_id | some v in decided.deny} == c.ids
}

test_priority_default_and_maximum_by_role_table if {
	every c in priority_cases {
		priority_row_ok(c)
	}
}

test_fine_tune_gets_the_role_priority_too if {
	jobs.evaluate(base).priority == 0
	jobs.evaluate(object.union(base, {"priority": 3})).priority == 3
}

test_queue_action_checks_role_priority_and_quota_not_model if {
	jobs.evaluate(queue).allow == true
	jobs.evaluate(queue).priority == 0
	{v.rule_id | some v in jobs.evaluate(object.union(queue, {"subject": dora})).deny} == {"jobs.role"}
	{v.rule_id | some v in jobs.evaluate(object.union(queue, {"usage": {"queued_jobs": quota.max_queued_jobs, "gpu_hours": 0}})).deny} == {"jobs.quota.queued_jobs"}
}
