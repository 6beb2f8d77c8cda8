package latentops.lib_test

import data.latentops.lib
import rego.v1

alice := {"kind": "user", "user_id": 1, "memberships": [
	{"team": "design", "role": "submitter"},
	{"team": "research", "role": "data_scientist"},
]}

test_roles_of_member_in_two_teams if {
	lib.roles(alice) == {"submitter", "data_scientist"}
	lib.teams(alice) == {"design", "research"}
}

test_role_in_team_and_outside_it if {
	lib.role_in(alice, "design") == "submitter"
	lib.role_in(alice, "legal") == ""
}

test_console_operator_gets_configured_roles if {
	lib.effective_roles({"kind": "console", "memberships": []}, ["admin"]) == {"admin"}
	lib.effective_roles(alice, ["admin"]) == {"submitter", "data_scientist"}
}

test_console_operator_acts_for_the_team_it_names if {
	lib.teams({"kind": "console", "memberships": [], "acting_for": "vision"}) == {"vision"}
	lib.teams({"kind": "console", "memberships": []}) == set()
	lib.teams(object.union(alice, {"acting_for": "legal"})) == {"design", "research"}
}

test_decision_allows_only_without_violations if {
	lib.decision(set()).allow == true
	lib.decision({lib.violation("x.y", "no")}).allow == false
}
