"""The shipped protected-names list and how the bundle mounts and edits it: every entry well formed,
no entry that ordinary prompts trip over, the file taking precedence over data.json, edits that
store only what changed, and decisions that follow the list in force."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from latentops.core.errors import InvalidInput
from latentops.governance import policy
from latentops.governance.normalize import term_key
from latentops.governance.policy_bundle import DEFAULT_POLICY_DIR, apply_edits, load_bundle
from latentops.governance.policy_engine import EmbeddedEngine
from latentops.governance.policy_names import NAME_CATEGORIES, check_edit, name_key

NAMES_FILE = DEFAULT_POLICY_DIR / "prompt" / "protected_names.json"
ORIGINAL = ["Mickey Mouse", "Minnie Mouse", "Donald Duck", "Pikachu", "Super Mario", "Spider-Man", "Darth Vader",
            "Hello Kitty", "Greg Rutkowski", "Loish", "Sakimichan", "Taylor Swift", "Beyonce", "Keanu Reeves",
            "Scarlett Johansson"]
# Prompts an image generator sees every day, several built around words that are parts of listed
# names ("tiger" and "woods", "bat" and "man", "jack" and "black", "leather face").
ORDINARY = [
    "a watercolour painting of a lighthouse at dusk, soft light, by the sea",
    "a tiger, woods in the background, morning mist",
    "a bat flying over a man walking home at night",
    "union jack, black and white photograph of a London street",
    "a weathered leather face mask on a workbench",
    "iron man statue made of scrap metal in a park",
    "a black panther resting on a tree branch, wildlife photography",
    "a green lantern hanging in a garden at dusk",
    "a scarlet witch in a dark forest, fantasy illustration",
    "portrait of a doctor, Manhattan skyline behind her",
    "faded jean, grey hoodie, street fashion photo",
    "my dog Charlie, brown fur, sitting on a porch",
    "a lake at twilight, sparkle of fireflies over the water",
    "soft fur by the fireplace, a sleeping cat",
    "bluey-grey sky over a harbour, oil painting",
    "a goofy cartoon dog with big ears, original character",
    "a little mermaid statue in Copenhagen harbour",
    "a cat in the hat shop window, Paris",
    "frozen lake under the northern lights",
    "a ring of mushrooms in a forest clearing",
    "a link of a steel chain, macro photograph",
    "an alien landscape with two moons",
    "vintage cars parked along a coastal road",
    "a big bird on a branch, birdwatching photo",
    "a poison ivy leaf, botanical illustration",
    "a joker playing card on a green felt table",
    "a superhero of my own design with a silver cape",
    "madonna and child, renaissance altarpiece style",
    "a drake swimming in a pond with ducklings",
    "a rocket launching at sunrise, raccoon watching from a log",
    "a sailor on a ship deck at night, full moon",
    "a kung fu master training in the mountains",
    "a stone bridge over a river, bill posters on the wall, gates open",
    "an old magnet on a steampunk desk",
    "a bowl of ramen with a fishcake and egg",
    "a solid gold snake bracelet, product photo",
    "a potato with a funny face drawn on it",
    "a child's drawing of a rainbow and a sun",
]


@pytest.fixture
def shipped() -> list[dict[str, str]]:
    return json.loads(NAMES_FILE.read_text(encoding="utf-8"))


@pytest.fixture
def service():  # type: ignore[no-untyped-def]
    svc = policy.PolicyService(engine=EmbeddedEngine())
    assert svc.reload().ok
    policy.use_service(svc)
    yield svc
    policy.use_service(None)


def test_shipped_list_is_hundreds_of_well_formed_names_in_three_categories(shipped: list[dict[str, str]]) -> None:
    counts = Counter(entry["category"] for entry in shipped)
    assert len(shipped) >= 400 and set(counts) == set(NAME_CATEGORIES)
    assert counts["trademarked character"] >= 200 and counts["celebrity"] >= 100 and counts["living artist"] >= 80
    assert [entry["name"] for entry in shipped[:len(ORIGINAL)]] == ORIGINAL  # the first fifteen stay
    assert all(set(entry) == {"name", "category"} and 0 < len(term_key(entry["name"]).split()) <= 5 for entry in shipped)
    keys = [name_key(entry["name"]) for entry in shipped]
    assert len(set(keys)) == len(keys)
    for name in ("Elsa", "Shrek", "Harry Potter", "Batman", "Wonder Woman", "Sonic the Hedgehog", "Master Chief",
                 "Lara Croft", "Homer Simpson", "SpongeBob SquarePants", "Optimus Prime", "Barbie", "Artgerm", "WLOP",
                 "Ross Tran", "James Jean", "Yoshitaka Amano", "Hayao Miyazaki"):
        assert name in {entry["name"] for entry in shipped}, name


def test_ordinary_prompts_name_nobody(service) -> None:  # type: ignore[no-untyped-def]
    for prompt in ORDINARY:
        section = policy.build_input("prompt", {"prompt": prompt}, service.bundle)["prompt"]
        assert section["protected_names"] == [], (prompt, section["protected_names"])


@pytest.mark.parametrize(("prompt", "name", "category"), [
    ("Elsa building a snowman", "Elsa", "trademarked character"),
    ("sh.r.e.k in a swamp", "Shrek", "trademarked character"),
    ("MASTER-CHIEF on a beach", "Master Chief", "trademarked character"),
    ("sonic the hedgehog running", "Sonic the Hedgehog", "trademarked character"),
    ("l4r4 cr0ft exploring a tomb", "Lara Croft", "trademarked character"),
    ("portrait of Zendaya, studio light", "Zendaya", "celebrity"),
    ("timothée chalamet on a red carpet", "Timothee Chalamet", "celebrity"),
    ("castle at night in the style of yoshitaka amano", "Yoshitaka Amano", "living artist"),
    ("a warrior, artgerm and wlop style", "Artgerm", "living artist"),
])
def test_names_of_every_category_are_refused(service, prompt: str, name: str, category: str) -> None:  # type: ignore[no-untyped-def]
    decision = policy.evaluate("prompt", {"prompt": prompt})
    assert decision.allow is False and "prompt.protected_name" in decision.rule_ids
    assert f"the prompt names {name}, a protected {category}" in decision.reasons


def test_the_names_stay_out_of_the_engines_document_but_in_the_revision(policy_dir: Path) -> None:
    bundle = load_bundle(policy_dir)
    assert "protected_names" not in bundle.data["policy_data"]["prompt"]  # no policy reads them; the host matches
    assert "protected_names" not in bundle.tarball.decode("latin-1")
    assert "Pikachu" in bundle.prompt_index.compact_names.get("pikachu", {}).get("name", "")
    edited = load_bundle(policy_dir, [("prompt.protected_names", {"remove": ["Pikachu"]})])
    assert edited.revision != bundle.revision and edited.data == bundle.data
    assert edited.prompt_index.compact_names.get("pikachu") is None


def test_the_names_file_takes_precedence_over_data_json(policy_dir: Path, shipped: list[dict[str, str]]) -> None:
    data_path = policy_dir / "prompt" / "data.json"
    data = json.loads(data_path.read_text())
    data["protected_names"] = [{"name": "pika-chu", "category": "celebrity"}, {"name": "Zorblax Quintera", "category": "celebrity"}]
    data_path.write_text(json.dumps(data))
    names = load_bundle(policy_dir).host_data["prompt"]["protected_names"]
    assert names[:len(shipped)] == shipped  # Pikachu keeps the file's entry
    assert names[len(shipped):] == [{"name": "Zorblax Quintera", "category": "celebrity"}]
    del data["protected_names"]  # data.json without the key: the file alone
    data_path.write_text(json.dumps(data))
    assert load_bundle(policy_dir).host_data["prompt"]["protected_names"] == shipped


@pytest.mark.parametrize(("entry", "message"), [
    ({"name": "Spiderman", "category": "trademarked character"},
     "prompt/protected_names.json[{n}].name: 'Spiderman' is 'Spider-Man' (entry 5) after normalisation"),
    ({"name": "Zorblax", "category": "villain"}, "prompt/protected_names.json[{n}].category: 'villain' is not a category"),
    ({"name": "one two three four five six", "category": "celebrity"},
     "prompt/protected_names.json[{n}].name: name 'one two three four five six' must have 1 to 5 words"),
    ({"name": "x" * 201, "category": "celebrity"}, "prompt/protected_names.json[{n}].name: 'xxxx"),
    ({"name": " ", "category": "celebrity"}, "prompt/protected_names.json[{n}].name: must not be empty"),
    ("Zorblax", "prompt/protected_names.json[{n}]: must be an object with string 'name' and 'category'"),
])
def test_a_bad_names_file_is_refused_with_its_entry(policy_dir: Path, shipped: list[dict[str, str]], entry: object,
                                                    message: str) -> None:
    (policy_dir / "prompt" / "protected_names.json").write_text(json.dumps([*shipped, entry]))
    with pytest.raises(InvalidInput) as refused:
        load_bundle(policy_dir)
    assert refused.value.detail.startswith(message.format(n=len(shipped)))


def test_edits_store_only_the_change_and_replay_leniently(shipped: list[dict[str, str]]) -> None:
    base = {"prompt": {"protected_names": shipped, "max_length": 2000}}
    edits = [
        ("prompt.protected_names", {"add": [{"name": "Zorblax Quintera", "category": "celebrity"}]}),
        ("prompt.protected_names", {"remove": ["spider man", "Nobody At All"]}),  # a name that is gone: nothing
        ("prompt.max_length", 1500),
        ("prompt.protected_names", {"recategorise": [{"name": "ZORBLAX-QUINTERA", "category": "living artist"}],
                                    "add": [{"name": "Pikachu", "category": "celebrity"}]}),  # there already: replaced
    ]
    effective = apply_edits(base, edits)["prompt"]
    names = {entry["name"]: entry["category"] for entry in effective["protected_names"]}
    assert effective["max_length"] == 1500 and "Spider-Man" not in names and len(names) == len(shipped)
    assert names["Zorblax Quintera"] == "living artist" and names["Pikachu"] == "celebrity"
    assert [entry["name"] for entry in effective["protected_names"][:3]] == ["Mickey Mouse", "Minnie Mouse", "Donald Duck"]
    assert base["prompt"]["protected_names"] == shipped  # a copy was edited
    with pytest.raises(InvalidInput, match="value of prompt.protected_names: must be"):
        apply_edits(base, [("prompt.protected_names", {"rename": ["x"]})])


def test_an_edit_is_checked_strictly_against_the_list_in_force(shipped: list[dict[str, str]]) -> None:
    assert check_edit(shipped, {"add": [{"name": "Zorblax Quintera", "category": "celebrity"}]}) == []
    assert check_edit(shipped, {"remove": ["Pikachu", "Nobody At All"],
                                "recategorise": [{"name": "Nobody Else", "category": "celebrity"}]}) == [
        ("remove[1]", "Nobody At All"), ("recategorise[0].name", "Nobody Else")]
    for edit, message in [
        ({"add": [{"name": "spider man", "category": "celebrity"}]}, "add[0].name: 'spider man' is already protected (as 'Spider-Man')"),
        ({"add": [{"name": "Zorblax Q", "category": "celebrity"}, {"name": "zorblax-q", "category": "celebrity"}]},
         "add[1].name: 'zorblax-q' is given twice in this edit (also add[0].name)"),
        ({"add": [{"name": "Zorblax", "category": "celebrity"}], "remove": ["ZORBLAX"]},
         "remove[0]: 'ZORBLAX' is given twice in this edit (also add[0].name)"),
        ({"recategorise": [{"name": "Pikachu", "category": "pokemon"}]}, "recategorise[0].category: 'pokemon' is not a category"),
        ({"add": [{"name": "Zor\u0000blax", "category": "celebrity"}]}, "add[0].name: 'Zor\\x00blax' contains a control character"),
        ({"remove": [""]}, "remove[0]: must be a name"),
        ({"rename": []}, "edit: must be"),
    ]:
        with pytest.raises(InvalidInput) as refused:
            check_edit(shipped, edit)
        assert refused.value.detail.startswith(message), refused.value.detail
