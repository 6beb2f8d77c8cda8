# Prompt rules: blocked content categories, protected names, personal data and prompt length.
#
# Input: {"prompt": <the section built by latentops.governance.normalize.analyse_prompt>}.
# The host has already matched the normalised prompt against the lists in
# data.policy_data.prompt (set lookups on token n-grams); this policy decides what the matches
# mean. Every violation carries a rule id and a sentence a user can act on.
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

personal(inp) := ((emails(inp) | phones(inp)) | cards(inp)) | national_ids(inp)

emails(inp) := {lib.violation("prompt.personal_data.email", personal_reason("email")) |
	count(inp.prompt.personal_data.emails) > 0
}

phones(inp) := {lib.violation("prompt.personal_data.phone", personal_reason("phone")) |
	count(inp.prompt.personal_data.phones) > 0
}

cards(inp) := {lib.violation("prompt.personal_data.payment_card", personal_reason("payment_card")) |
	some candidate in inp.prompt.personal_data.card_candidates
	luhn_valid(candidate)
}

national_ids(inp) := {lib.violation(
	"prompt.personal_data.national_id",
	sprintf("the prompt contains %s (%s); remove it", [cfg.personal_data.national_id, id.format]),
) |
	some id in inp.prompt.personal_data.national_ids
}

personal_reason(kind) := sprintf("the prompt contains %s; remove it", [cfg.personal_data[kind]])

# Luhn checksum over a string of digits: double every second digit from the right.
luhn_valid(digits) if {
	n := count(digits)
	n >= 13
	total := sum([luhn_term(to_number(substring(digits, i, 1)), (n - 1) - i) |
		some i in numbers.range(0, n - 1)
	])
	total % 10 == 0
}

luhn_term(d, position) := d if position % 2 == 0

luhn_term(d, position) := d * 2 if {
	position % 2 == 1
	d * 2 <= 9
}

luhn_term(d, position) := (d * 2) - 9 if {
	position % 2 == 1
	d * 2 > 9
}
