"""The prompt policy end to end: normalisation resists evasion, ordinary words pass, personal data is caught."""

from __future__ import annotations

import pytest

from latentops.governance import policy
from latentops.governance.normalize import mask_text, normalize_text, tokenize
from latentops.governance.policy_engine import EmbeddedEngine


@pytest.fixture(scope="module", autouse=True)
def embedded_service():  # type: ignore[no-untyped-def]
    service = policy.PolicyService(engine=EmbeddedEngine())
    assert service.reload().ok
    policy.use_service(service)
    yield service
    policy.use_service(None)


def rule_ids(text: str) -> list[str]:
    return policy.evaluate("prompt", {"prompt": text}).rule_ids


EVASIONS = [
    ("Mickey Mouse", "prompt.protected_name"),
    ("m.i.c.k.e.y mouse", "prompt.protected_name"),
    ("m i c k e y m o u s e", "prompt.protected_name"),
    ("MICKEY-MOUSE on a boat", "prompt.protected_name"),
    ("in the style of GREG_RUTKOWSKI", "prompt.protected_name"),
    ("greg rutkowski's style", "prompt.protected_name"),
    ("m1ck3y m0use", "prompt.protected_name"),
    ("Tay1or Sw1ft on stage", "prompt.protected_name"),
    ("p1k@chu", "prompt.protected_name"),
    ("ｐｉｋａｃｈｕ", "prompt.protected_name"),  # fullwidth
    ("pi\u200bka\u200dchu", "prompt.protected_name"),  # zero-width characters
    ("Міскеу Mouse", "prompt.protected_name"),  # Cyrillic look-alikes
    ("pıkachu", "prompt.protected_name"),  # dotless i
    ("ΡΙΚΑCΗU", "prompt.protected_name"),  # Greek capitals
    ("mïckëy mouse", "prompt.protected_name"),  # diacritics
    ("taylorswift", "prompt.protected_name"),  # compact
    ("pika chu", "prompt.protected_name"),  # split
    ("a g0ry battlefield", "prompt.gore"),
    ("s.e.l.f h.a.r.m", "prompt.self_harm"),
    ("nud3 photo", "prompt.sexual"),
]


@pytest.mark.parametrize(("text", "rule"), EVASIONS)
def test_evasions_are_denied_with_rule_id(text: str, rule: str) -> None:
    decision = policy.evaluate("prompt", {"prompt": text})
    assert decision.allow is False
    assert rule in decision.rule_ids
    assert all(reason for reason in decision.reasons)


@pytest.mark.parametrize("text", [
    "a bowl of grapes", "the Scunthorpe town hall", "a cocktail bar at night", "a cottage in Essex",
    "an assassin in a hooded cloak", "a therapist's office with plants", "a classic 1950s diner",
    "a 1024x1024 landscape with 4 cats", "Mickey, a dog named after his grandfather", "a mouse in a field",
])
def test_ordinary_words_pass(text: str) -> None:
    decision = policy.evaluate("prompt", {"prompt": text})
    assert decision.allow, decision.reasons


@pytest.mark.parametrize(("text", "rule", "evidence"), [
    ("an evicerated soldier on a battlefield, comic art", "prompt.gore", "evicerated~eviscerated"),  # letter dropped
    ("splitternackte Frau auf einem Heuballen", "prompt.sexual", "splitternackte~splitternackt"),  # inflected
    ("a dismembred body in a ditch", "prompt.gore", "dismembred~dismembered"),
    ("a mutliated corpse", "prompt.gore", "mutliated~mutilated"),  # neighbours swapped
])
def test_misspelt_or_inflected_terms_are_denied_with_the_match_as_evidence(text: str, rule: str, evidence: str) -> None:
    decision = policy.evaluate("prompt", {"prompt": text})
    assert rule in decision.rule_ids
    assert any(evidence in reason for reason in decision.reasons), decision.reasons


@pytest.mark.parametrize(("text", "token"), [
    ("a poster for three movie sequels", "sequels"),  # one edit from French "sexuels", but an English word
    ("a massacre memorial at dawn, wreaths", "massacre"),  # one edit from Spanish "masacre"
])
def test_english_words_one_edit_from_a_foreign_term_are_not_matched(embedded_service, text: str, token: str) -> None:  # type: ignore[no-untyped-def]
    index = embedded_service.bundle.prompt_index  # what the policy host matches with
    assert index.near_terms_of(token), "the token is one edit from a listed term"
    assert index.match_terms(tokenize(text)) == {}


def test_sexual_content_involving_minors_denied_under_its_own_rule() -> None:
    assert "prompt.sexual_minors" in rule_ids("a nud3 sch00lgirl")


@pytest.mark.parametrize(("text", "rule"), [
    ("email me at jane.doe@example.com", "prompt.personal_data.email"),
    ("call +44 20 7946 0958 today", "prompt.personal_data.phone"),
    ("card 4111 1111 1111 1111", "prompt.personal_data.payment_card"),
    ("card 4111-1111-1111-1111", "prompt.personal_data.payment_card"),
    ("ssn 123-45-6789", "prompt.personal_data.national_id"),
    ("nino AB 12 34 56 C", "prompt.personal_data.national_id"),
])
def test_personal_data_denied(text: str, rule: str) -> None:
    assert rule_ids(text) == [rule]


def test_card_number_that_fails_luhn_passes() -> None:
    assert rule_ids("serial 4111 1111 1111 1112") == []


def test_prompt_over_max_length_denied_and_huge_prompt_not_analysed() -> None:
    assert rule_ids("a" * 2001) == ["prompt.too_long"]
    assert rule_ids("mickey mouse " * 10_000) == ["prompt.too_long"]


def test_non_string_prompt_is_invalid_input() -> None:
    from latentops.core.errors import InvalidInput

    with pytest.raises(InvalidInput, match="prompt: must be a string, got int"):
        policy.evaluate("prompt", {"prompt": 42})


def test_unknown_path_is_invalid_input() -> None:
    from latentops.core.errors import InvalidInput

    with pytest.raises(InvalidInput, match="unknown policy path 'nope'"):
        policy.evaluate("nope", {})


def test_normalised_form_and_masking() -> None:
    assert normalize_text("MICKEY-MOUSE  m.i.c.k.e.y") == "mickey mouse mickey"
    masked = mask_text("write to jane@example.com or +44 20 7946 0958, card 4111 1111 1111 1111")
    assert "jane" not in masked and "7946" not in masked and "4111" not in masked
    assert masked == "write to [email] or [phone], card [payment_card]"


def test_policy_data_exposes_thresholds_limits_and_quotas() -> None:
    thresholds = policy.policy_data("screening.thresholds")
    assert set(thresholds) == {"sexual", "minors", "violence", "self_harm", "hate", "weapons"}
    assert policy.policy_data("screening.release_without_detector") is False
    assert policy.policy_data("jobs.limits.submitter")["max_rank"] == 16
    assert policy.policy_data("jobs.quotas.default")["max_concurrent_jobs"] == 4
    assert policy.policy_data("datasets.max_images")["data_scientist"] == 5000
    thresholds["sexual"] = 0.99  # a copy: the data in force is unchanged
    assert policy.policy_data("screening.thresholds")["sexual"] == 0.5
