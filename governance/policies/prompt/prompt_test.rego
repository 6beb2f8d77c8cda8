package latentops.prompt_test

import data.latentops.prompt
import rego.v1

no_personal_data := {"findings": []}

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

finding(kind, format) := {"kind": kind, "format": format, "masked": "********42"}

with_findings(findings) := {"personal_data": {"findings": findings}}

personal_data_cases := [
	{"finding": finding("email", "email"), "rule": "prompt.personal_data.email", "reason": "the prompt contains an email address; remove it"},
	{"finding": finding("phone", "GB"), "rule": "prompt.personal_data.phone", "reason": "the prompt contains a phone number (GB); remove it"},
	{"finding": finding("payment_card", "visa"), "rule": "prompt.personal_data.payment_card", "reason": "the prompt contains a payment card number (visa); remove it"},
	{"finding": finding("iban", "iban"), "rule": "prompt.personal_data.iban", "reason": "the prompt contains a bank account number (IBAN); remove it"},
	{"finding": finding("national_id", "us.ssn"), "rule": "prompt.personal_data.national_id", "reason": "the prompt contains a national identity number (us.ssn); remove it"},
	{"finding": finding("vat", "eu.vat"), "rule": "prompt.personal_data.vat", "reason": "the prompt contains a VAT number (eu.vat); remove it"},
]

test_personal_data_denied_per_kind_with_kind_and_format_in_reason if {
	every c in personal_data_cases {
		d := prompt.evaluate({"prompt": section(with_findings([c.finding]))})
		d.allow == false
		d.deny == {{"rule_id": c.rule, "reason": c.reason}}
	}
}

test_personal_data_one_violation_per_kind_naming_every_format if {
	d := prompt.evaluate({"prompt": section(with_findings([
		finding("national_id", "us.ssn"), finding("national_id", "fr.nir"), finding("national_id", "us.ssn"),
		finding("phone", "US"),
	]))})
	d.deny == {
		{"rule_id": "prompt.personal_data.national_id", "reason": "the prompt contains a national identity number (fr.nir, us.ssn); remove it"},
		{"rule_id": "prompt.personal_data.phone", "reason": "the prompt contains a phone number (US); remove it"},
	}
}

test_personal_data_reason_never_carries_the_value if {
	d := prompt.evaluate({"prompt": section(with_findings([finding("payment_card", "visa")]))})
	every v in d.deny {
		not contains(v.reason, "42")
	}
}

test_no_findings_allowed if {
	allowed(with_findings([]))
}

test_kind_without_a_label_denied_under_its_own_rule_id if {
	d := prompt.evaluate({"prompt": section(with_findings([finding("passport", "de.passport")]))})
	d.deny == {{"rule_id": "prompt.personal_data.passport", "reason": "the prompt contains personal data (passport) (de.passport); remove it"}}
}

test_allowed_kinds_pass if {
	inp := {"prompt": section(with_findings([finding("vat", "eu.vat"), finding("phone", "FR")]))}
	{v.rule_id | some v in prompt.personal_data(inp, ["vat"])} == {"prompt.personal_data.phone"}
	count(prompt.personal_data(inp, ["vat", "phone"])) == 0
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
