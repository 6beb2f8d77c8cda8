package latentops.prompt_test

import data.latentops.prompt
import rego.v1

no_personal_data := {"emails": [], "phones": [], "card_candidates": [], "national_ids": []}

# A prompt section as the host builds it (see latentops.governance.normalize.analyse_prompt).
section(overrides) := object.union(
	{"raw": "a cat", "length": 5, "analysed": true, "normalized": "a cat", "terms": {}, "protected_names": [], "personal_data": no_personal_data},
	overrides,
)

rule_ids(inp) := {v.rule_id | some v in prompt.evaluate({"prompt": section(inp)}).deny}

allowed(inp) if prompt.evaluate({"prompt": section(inp)}).allow == true

test_plain_prompt_allowed if {
	allowed({})
}

blocked_category_cases := [
	{"terms": {"gore": ["gore"]}, "rule": "prompt.gore"},
	{"terms": {"self_harm": ["self harm"]}, "rule": "prompt.self_harm"},
	{"terms": {"hate": ["heil hitler"]}, "rule": "prompt.hate"},
	{"terms": {"sexual": ["nude"]}, "rule": "prompt.sexual"},
]

test_blocked_categories_denied_with_their_rule_id if {
	every c in blocked_category_cases {
		rule_ids({"terms": c.terms}) == {c.rule}
	}
}

test_sexual_terms_with_minors_denied_as_sexual_minors if {
	"prompt.sexual_minors" in rule_ids({"terms": {"sexual": ["nude"], "minors": ["child"]}})
}

test_minors_alone_allowed if {
	allowed({"terms": {"minors": ["child"]}})
}

test_protected_name_denied_with_name_in_reason if {
	d := prompt.evaluate({"prompt": section({"protected_names": [{"name": "Mickey Mouse", "category": "trademarked character", "matched": "mickey mouse"}]})})
	d.allow == false
	d.deny == {{"rule_id": "prompt.protected_name", "reason": "the prompt names Mickey Mouse, a protected trademarked character"}}
}

personal_data_cases := [
	{"pd": {"emails": ["******om"]}, "rule": "prompt.personal_data.email"},
	{"pd": {"phones": ["*******58"]}, "rule": "prompt.personal_data.phone"},
	{"pd": {"card_candidates": ["4111111111111111"]}, "rule": "prompt.personal_data.payment_card"},
	{"pd": {"card_candidates": ["5500005555555559"]}, "rule": "prompt.personal_data.payment_card"},
	{"pd": {"national_ids": [{"format": "us_ssn", "masked": "*********89"}]}, "rule": "prompt.personal_data.national_id"},
]

test_personal_data_denied_per_kind if {
	every c in personal_data_cases {
		rule_ids({"personal_data": object.union(no_personal_data, c.pd)}) == {c.rule}
	}
}

test_card_number_failing_luhn_allowed if {
	allowed({"personal_data": object.union(no_personal_data, {"card_candidates": ["4111111111111112", "1234567890123"]})})
}

test_luhn_checksum_table if {
	prompt.luhn_valid("4111111111111111")
	prompt.luhn_valid("378282246310005")
	prompt.luhn_valid("6011111111111117")
	not prompt.luhn_valid("4111111111111121")
	not prompt.luhn_valid("411111111111")
}

test_prompt_over_limit_denied_as_too_long if {
	rule_ids({"length": 2001, "analysed": true}) == {"prompt.too_long"}
	allowed({"length": 2000})
}

test_oversize_prompt_not_analysed_denied_by_length_only if {
	rule_ids({"length": 50000, "analysed": false}) == {"prompt.too_long"}
}

test_unanalysed_prompt_denied_as_invalid_input if {
	rule_ids({"analysed": false}) == {"prompt.invalid_input"}
}

test_every_violation_reported_together if {
	ids := rule_ids({"length": 2001, "terms": {"gore": ["gore"]}, "protected_names": [{"name": "Pikachu", "category": "trademarked character"}]})
	ids == {"prompt.too_long", "prompt.gore", "prompt.protected_name"}
}
