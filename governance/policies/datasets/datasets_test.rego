package latentops.datasets_test

import data.latentops.datasets
import rego.v1

erin := {"kind": "user", "user_id": 5, "memberships": [{"team": "research", "role": "data_scientist"}]}

alice := {"kind": "user", "user_id": 1, "memberships": [{"team": "design", "role": "submitter"}]}

rule_ids(inp) := {v.rule_id | some v in datasets.evaluate(inp).deny}

gen(subject, team, images) := {"action": "generate", "team": team, "subject": subject, "dataset": {"images": images, "resolution": 512, "team": team}}

cases := [
	{"in": gen(erin, "research", 5000), "ids": set()},
	{"in": gen(erin, "research", 5001), "ids": {"datasets.size"}},
	{"in": gen(alice, "design", 10), "ids": {"datasets.role", "datasets.size"}},
	{"in": {"action": "generate", "team": "research", "subject": erin, "dataset": {"images": 10, "resolution": 2048, "team": "research"}}, "ids": {"datasets.resolution"}},
	{"in": {"action": "export", "team": "research", "subject": erin, "dataset": {"images": 10, "team": "research"}}, "ids": set()},
	{"in": {"action": "export", "team": "research", "subject": erin, "dataset": {"images": 10, "team": "design"}}, "ids": {"datasets.not_owner"}},
	{"in": {"action": "delete", "team": "research", "subject": erin, "dataset": {"images": 10, "team": "research"}}, "ids": {"datasets.unknown_action"}},
]

test_dataset_decision_table if {
	every c in cases {
		rule_ids(c["in"]) == c.ids
	}
}
