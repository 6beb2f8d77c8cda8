# Prompt rules: blocked content categories, protected names, personal data and prompt length.
#
# Input: {"prompt": <the section built by latentops.governance.normalize.analyse_prompt>}.
# The host has already matched the normalised prompt against the lists in
# data.policy_data.prompt (set lookups on token n-grams); this policy decides what the matches
# mean. Personal data arrives the same way: findings the host has validated (phone numbers by
# phonenumbers, identifiers by python-stdnum checksums); the policy decides which kinds are refused.
# Every violation carries a rule id and a sentence a user can act on.
package latentops.prompt

import data.latentops.lib
import rego.v1

cfg := data.policy_data.prompt

decision := evaluate(input)

evaluate(inp) := lib.decision(violations(inp))

violations(inp) := ((((shape(inp) | too_long(inp)) | sexual_minors(inp)) | categories(inp)) | names(inp)) | personal(inp)

# Fail closed on an input that is not what the host contract promises.
shape(inp) := {lib.violation("prompt.invalid_input", "the prompt was not analysed, so it cannot be allowed")} if {
	not analysed(inp)
	inp.prompt.length <= cfg.max_length
} else := set()

analysed(inp) if {
	inp.prompt.analysed == true
	is_string(inp.prompt.raw)
}

too_long(inp) := {lib.violation(
	"prompt.too_long",
	sprintf("the prompt is %d characters long; the limit is %d", [inp.prompt.length, cfg.max_length]),
)} if {
	inp.prompt.length > cfg.max_length
} else := set()

matched(inp, category) := terms if {
	terms := inp.prompt.terms[category]
} else := []

# Sexual content involving minors is refused whatever the category settings say.
sexual_minors(inp) := {lib.violation(
	"prompt.sexual_minors",
	"the prompt combines sexual terms with terms about minors",
)} if {
	count(matched(inp, "sexual")) > 0
	count(matched(inp, "minors")) > 0
} else := set()

categories(inp) := {lib.violation(
	sprintf("prompt.%s", [category]),
	# concat, not sprintf: rego-cpp quotes computed strings passed to sprintf's %s.
	concat("", ["the prompt asks for ", label, " (matched: ", concat(", ", matched(inp, category)), ")"]),
) |
	some category in object.keys(cfg.blocked_categories)
	count(matched(inp, category)) > 0
	label := cfg.blocked_categories[category]
}

names(inp) := {lib.violation(
	"prompt.protected_name",
	sprintf("the prompt names %s, a protected %s", [entry.name, entry.category]),
) |
	some entry in inp.prompt.protected_names
}

# Personal data. The host finds candidates and validates them (phonenumbers; python-stdnum
# checksums for IBANs, payment cards, national ids and VAT numbers; emails): the input's
# prompt.personal_data is {"findings": [{"kind", "format", "masked"}]} (see
# latentops.governance.personal_data). The policy decides: a finding denies under
# prompt.personal_data.<kind> unless policy data lists its kind in personal_data.allowed_kinds,
# so a kind the host learns to find is refused until allowed. The reason names the kind (its label
# in personal_data) and the formats found (a region, a card network, a stdnum module), never the value.
personal(inp) := personal_data(inp, object.get(cfg.personal_data, "allowed_kinds", []))

personal_data(inp, allowed_kinds) := {lib.violation(concat("", ["prompt.personal_data.", kind]), personal_reason(kind, formats)) |
	some kind in {finding.kind | some finding in inp.prompt.personal_data.findings}
	not kind in allowed_kinds
	formats := sort({finding.format |
		some finding in inp.prompt.personal_data.findings
		finding.kind == kind
		finding.format != kind
	})
}

personal_reason(kind, formats) := concat("", ["the prompt contains ", personal_label(kind), personal_formats(formats), "; remove it"])

personal_label(kind) := cfg.personal_data[kind] if {
	is_string(cfg.personal_data[kind])
} else := concat("", ["personal data (", kind, ")"])

personal_formats(formats) := concat("", [" (", concat(", ", formats), ")"]) if {
	count(formats) > 0
} else := ""
