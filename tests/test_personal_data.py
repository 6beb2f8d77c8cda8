"""Personal data in prompts: phone numbers by phonenumbers, identifiers by python-stdnum checksums,
emails; evasions are caught, ordinary numbers in image prompts are not, and the prompt policy
refuses each kind under its own rule id."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from latentops.governance import policy
from latentops.governance.normalize import PromptIndex, analyse_prompt, fold, mask_input, mask_text
from latentops.governance.personal_data import Scanner
from latentops.governance.policy_engine import EmbeddedEngine

SCANNER = Scanner(fold=fold)


def found(text: str) -> list[tuple[str, str]]:
    return [(f.kind, f.format) for f in SCANNER.scan(text)]


PHONES = [
    ("call +44 20 7946 0958 today", "GB"),
    ("ring +33 1 42 68 53 00", "FR"),
    ("+49 30 901820", "DE"),
    ("office (212) 555-0100", "US"),
    ("212-555-0100", "US"),
    ("+1 (212) 555-0100", "US"),
    ("+81 3-1234-5678", "JP"),
    ("+55 11 91234-5678", "BR"),
    ("0044 20 7946 0958", "GB"),
    ("020 7946 0958", "GB"),
    ("06 12 34 56 78", "FR"),
    ("tel. 030 901820", "DE"),
    ("call me at 2125550100", "US"),
    ("+44.20.7946.0958", "GB"),
]


@pytest.mark.parametrize(("text", "region"), PHONES)
def test_phone_numbers_in_any_format(text: str, region: str) -> None:
    assert found(text) == [("phone", region)]


IBANS = [
    "DE89 3704 0044 0532 0130 00",
    "GB29 NWBK 6016 1331 9268 19",
    "FR14 2004 1010 0505 0001 3M02 606",
    "NL91 ABNA 0417 1643 00",
    "DE89370400440532013000",
    "iban: de89 3704 0044 0532 0130 00",
]


@pytest.mark.parametrize("text", IBANS)
def test_ibans_with_and_without_spaces(text: str) -> None:
    assert found(f"pay to {text} please") == [("iban", "iban")]


def test_iban_with_a_wrong_check_digit_is_not_reported() -> None:
    assert found("DE89 3704 0044 0532 0130 01") == []


@pytest.mark.parametrize(("text", "network"), [
    ("4111 1111 1111 1111", "visa"),
    ("4111-1111-1111-1111", "visa"),
    ("4111.1111.1111.1111", "visa"),
    ("5500 0055 5555 5559", "mastercard"),
    ("3782 822463 10005", "amex"),
    ("6011 1111 1111 1117", "discover"),
    ("3530 1113 3330 0000", "jcb"),
])
def test_payment_cards_with_a_valid_luhn_digit(text: str, network: str) -> None:
    assert found(f"card {text} exp 12/29") == [("payment_card", network)]


@pytest.mark.parametrize("text", ["4111 1111 1111 1112", "5500 0055 5555 5558", "1234 5678 9012 3456"])
def test_card_numbers_failing_luhn_are_not_reported(text: str) -> None:
    assert found(f"serial {text}") == []


VALID_IDS = [
    ("ssn 123-45-6789", "us.ssn"),
    ("123 45 6789", "us.ssn"),
    ("nino AB 12 34 56 C", "gb.nino"),
    ("AB123456C", "gb.nino"),
    ("2 95 10 99 126 111 93", "fr.nir"),
    ("dni 12345678Z", "es.dni"),
    ("nie X1234567L", "es.nie"),
    ("RSSMRA85T10A562S", "it.codicefiscale"),
    ("rssmra85t10a562s", "it.codicefiscale"),
    ("Steuer-ID 36574261809", "de.idnr"),
    ("36 574 261 809", "de.idnr"),
    ("bsn 111222333", "nl.bsn"),
    ("NIF 123456789", "pt.nif"),
    ("85.07.30-033.28", "be.nn"),
]


@pytest.mark.parametrize(("text", "fmt"), VALID_IDS)
def test_national_ids_with_a_valid_checksum(text: str, fmt: str) -> None:
    assert found(text) == [("national_id", fmt)]


@pytest.mark.parametrize("text", [
    "ssn 078-05-1120", "ssn 666-12-3456", "ssn 900-12-3456", "nino QQ 12 34 56 C", "GB 12 34 56 A",
    "2 95 10 99 126 111 94", "dni 12345678A", "nie X1234567A", "RSSMRA85T10A562T", "Steuer-ID 36574261808",
    "bsn 111222334", "NIF 123456780", "85.07.30-033.29",
])
def test_national_ids_with_a_wrong_checksum_or_structure(text: str) -> None:
    assert found(text) == []


def test_weak_checksums_need_their_word_before_them() -> None:
    # A nine-digit number passes the BSN and NIF checksums one time in eleven: a seed is not an id.
    assert found("bsn 111222333") == [("national_id", "nl.bsn")]
    assert found("a poster showing 111222333") == []
    assert found("123456789") == []


@pytest.mark.parametrize(("text", "fmt"), [
    ("VAT DE136695976", "eu.vat"),
    ("DE136695976", "eu.vat"),
    ("TVA FR40303265045", "eu.vat"),
    ("NL004495445B01", "eu.vat"),
    ("GB980780684", "gb.vat"),
])
def test_vat_numbers(text: str, fmt: str) -> None:
    assert found(text) == [("vat", fmt)]


def test_vat_number_with_a_wrong_check_digit() -> None:
    assert found("DE136695977") == []


@pytest.mark.parametrize("text", [
    "email me at jane.doe@example.com", "j_doe+tag@mail.example.co.uk", "write to Jane.Doe@Example.COM now",
    "joao@sapo.pt",
])
def test_emails(text: str) -> None:
    assert found(text) == [("email", "email")]


@pytest.mark.parametrize("text", ["icon@2x.png", "an @artist handle", "user@localhost", "a@b", "jane.doe@example",
                                  "jane..doe@example.com"])
def test_things_that_are_not_email_addresses(text: str) -> None:
    assert found(text) == []


EVASIONS = [
    ("4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1", ("payment_card", "visa")),  # spaced digits
    ("４１１１ １１１１ １１１１ １１１１", ("payment_card", "visa")),  # fullwidth digits
    ("41\u200b11 11\u200c11 1111 11\u206011", ("payment_card", "visa")),  # zero-width characters
    ("٤١١١ ١١١١ ١١١١ ١١١١", ("payment_card", "visa")),  # Arabic-Indic digits
    ("+ 4 4 2 0 7 9 4 6 0 9 5 8", ("phone", "GB")),
    ("+44\u200b20\u200b7946\u200b0958", ("phone", "GB")),
    ("+４４ ２０ ７９４６ ０９５８", ("phone", "GB")),
    ("+44 20 7946 095з", ("phone", "GB")),  # Cyrillic ze for 3
    ("0 6 1 2 3 4 5 6 7 8", ("phone", "FR")),
    ("DЕ89 3704 0044 0532 0130 00", ("iban", "iban")),  # Cyrillic Ie
    ("jane\u200b.doe@exa\u200bmple.com", ("email", "email")),
    ("ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ", ("email", "email")),
    ("1\u200b2\u200b3-4\u200b5-6\u200b7\u200b8\u200b9", ("national_id", "us.ssn")),
    ("ＲＳＳＭＲＡ８５Ｔ１０Ａ５６２Ｓ", ("national_id", "it.codicefiscale")),
]


@pytest.mark.parametrize(("text", "finding"), EVASIONS)
def test_evasions_are_found(text: str, finding: tuple[str, str]) -> None:
    assert found(text) == [finding]


BENIGN = [
    "a lighthouse at dusk, 4k, highly detailed",
    "portrait of an astronaut, 8k, seed 1234567890, 50 steps, cfg 7.5",
    "a cyberpunk city at night, 1920x1080, trending in 2023",
    "watercolor fox, 1024x1024, steps: 30, sampler: DPM++ 2M Karras, seed: 2718281828",
    "seed 987654321, a castle on a hill",
    "seed 3141592653 a foggy forest",
    "seed 4294967295 sunset over the ocean",
    "seed 18446744073709551615, dragon",
    "seed 4111111111111111, a lake",
    "seed=5839274619283746 koi pond",
    "a classic 1950s diner with a 1957 Chevrolet outside",
    "a vintage poster from 1920, art deco, 3840 x 2160",
    "sizes 512 768 1024, product shot of a watch",
    "a price tag reading $1,299.99 on a red sofa",
    "a market stall, apples 2.50 EUR per kg, 3 for 5",
    "a billboard that says SALE 50% OFF, only 19.99",
    "a 1 200 000 euro villa on the coast",
    "a calendar page for 2024-01-15",
    "timestamp 2024-01-15T10:30:00Z on a security camera frame",
    "a diary entry dated 03/04/2025 on old paper",
    "a newspaper dated 10.5.2024, sepia",
    "a clock showing 12:45:30 on a wall",
    "SDXL 1.0 refiner, photorealistic cat",
    "stable diffusion v1.5 and 2.1 comparison chart",
    "model sd_xl_base_1.0.safetensors, lora strength 0.8",
    "version 3.11.4 python logo",
    "ISBN 978-3-16-148410-0 printed on a book cover",
    "a barcode 5901234123457 on a cereal box",
    "a jersey with number 23 and 45, basketball court",
    "a house number 221B on a London door",
    "a runner with bib 10472 crossing the finish line",
    "population 8 336 817 infographic",
    "12 000 000 stars in a galaxy",
    "a mountain 8848 m high, clouds",
    "640 480 320 240 pixel art sprites",
    "1080 1920 2160 3840 resolution chart",
    "aspect ratio 16:9, 2.39:1 cinematic, 35mm, f/1.8, ISO 100, 1/250",
    "a recipe card: 200 g flour, 2 eggs, 350 ml milk, bake 180 C for 25 min",
    "year 1999 2000 2001 2002 timeline",
    "a lottery ticket with numbers 4 8 15 16 23 42",
    "binary code 01001000 01101001 on a screen",
    "hex colour #ff8800 and #00ffcc gradient",
    "coordinates 48.8584, 2.2945 Eiffel tower",
    "latitude 40.7128 longitude -74.0060 skyline",
    "flight AF1234 departure board, gate 42",
    "a vintage car with plate ABC 1234",
    "1 2 3 4 5 6 7 8 9 10 countdown on a wall",
    "a receipt total 123.45 with tax 20.57",
    "steps 25, cfg 6, seed 555555555, clip skip 2",
    "a 3D render at 2048x2048 with 64 samples and 12 bounces",
    "a batch of 16 images, 768 x 1344, seed 20240115",
    "a gallery wall with frames 30x40 50x70 and 70x100 cm",
    "icon@2x.png app icon in flat style",
    "an old phone booth in London, red, 1980s",
    "a movie prop phone number 555-0100",
    "a sign reading (123) 456-7890",
    "a fake number +1 555 0100 on a billboard",
    "a poster with 111 222 333 on it",
    "the year 2077 in neon, 16k",
]


@pytest.mark.parametrize("text", BENIGN)
def test_ordinary_numbers_in_image_prompts_are_not_personal_data(text: str) -> None:
    assert found(text) == []


def test_a_seed_written_in_groups_is_still_read() -> None:
    assert found("seed 4111 1111 1111 1111") == [("payment_card", "visa")]


def test_section_lists_each_value_once_masked() -> None:
    section = SCANNER.section("card 4111 1111 1111 1111, again 4111111111111111, mail jane@example.com")
    assert section == {"findings": [
        {"kind": "payment_card", "format": "visa", "masked": "**************11"},
        {"kind": "email", "format": "email", "masked": "**************om"},
    ]}


def test_mask_replaces_what_was_written_with_the_kind() -> None:
    text = "mail ja\u200bne@example.com or call +44 20 7946 0958, IBAN DE89 3704 0044 0532 0130 00, ssn 123-45-6789"
    assert SCANNER.mask(text) == "mail [email] or call [phone], IBAN [iban], ssn [national_id]"


def test_phone_regions_come_from_policy_data() -> None:
    us_only = Scanner.from_data({"phone_regions": ["US", "XX"]}, fold=fold)
    assert us_only.phone_regions == ("US",)
    assert [f.kind for f in us_only.scan("020 7946 0958")] == []
    assert [f.format for f in us_only.scan("+44 20 7946 0958")] == ["GB"]


def test_analysed_prompt_and_masked_record() -> None:
    index = PromptIndex.from_data({"personal_data": {"phone_regions": ["GB"]}})
    section = analyse_prompt("mickey, mail jane.doe@example.com", index)
    assert section["personal_data"] == {"findings": [{"kind": "email", "format": "email", "masked": "******************om"}]}
    masked = mask_input({"prompt": section}, index)
    assert masked["prompt"]["raw"] == "mickey, mail [email]"
    assert masked["prompt"]["normalized"] == "mickey mail email"
    assert "jane" not in json.dumps(masked) and mask_text("jane.doe@example.com") == "[email]"


@pytest.fixture(scope="module")
def embedded_service() -> Iterator[policy.PolicyService]:
    service = policy.PolicyService(engine=EmbeddedEngine())
    assert service.reload().ok
    policy.use_service(service)
    yield service
    policy.use_service(None)


@pytest.mark.parametrize(("text", "rule", "reason"), [
    ("call +44 20 7946 0958", "prompt.personal_data.phone", "the prompt contains a phone number (GB); remove it"),
    ("(212) 555-0100", "prompt.personal_data.phone", "the prompt contains a phone number (US); remove it"),
    ("IBAN GB29 NWBK 6016 1331 9268 19", "prompt.personal_data.iban",
     "the prompt contains a bank account number (IBAN); remove it"),
    ("card 4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1", "prompt.personal_data.payment_card",
     "the prompt contains a payment card number (visa); remove it"),
    ("RSSMRA85T10A562S", "prompt.personal_data.national_id",
     "the prompt contains a national identity number (it.codicefiscale); remove it"),
    ("VAT DE136695976", "prompt.personal_data.vat", "the prompt contains a VAT number (eu.vat); remove it"),
    ("mail ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ", "prompt.personal_data.email", "the prompt contains an email address; remove it"),
])
def test_policy_denies_each_kind_naming_kind_and_format(embedded_service: policy.PolicyService, text: str, rule: str,
                                                        reason: str) -> None:
    decision = policy.evaluate("prompt", {"prompt": f"a portrait, {text}"})
    assert decision.allow is False
    assert decision.rule_ids == [rule]
    assert decision.reasons == [reason]


@pytest.mark.parametrize("text", BENIGN[:12])
def test_policy_allows_ordinary_prompts_with_numbers(embedded_service: policy.PolicyService, text: str) -> None:
    decision = policy.evaluate("prompt", {"prompt": text})
    assert decision.allow, decision.reasons
