import pytest

from workers.data.spec import SpecError, builtin_specs, load_spec, parse_spec


def _spec(**changes):
    base = {"name": "t", "preset": "tiny",
            "sources": [{"name": "docs", "modality": "text", "reader": "pydoc-topics"}],
            "media": {"image_size": 16}}
    base.update(changes)
    return base


def test_builtin_specs_load():
    assert {"tiny", "demo"} <= set(builtin_specs())
    for name in builtin_specs():
        spec = load_spec(name)
        assert spec.sources and spec.name == name


@pytest.mark.parametrize("changes, fragment", [
    ({"sources": [{"name": "x", "modality": "text", "reader": "nope"}]}, "reader 'nope' is unknown"),
    ({"sources": [{"name": "x", "modality": "image", "reader": "pydoc-topics"}]}, "not modality 'image'"),
    ({"sources": [{"name": "x", "modality": "text", "reader": "pydoc-topics", "location": "/data"}]},
     "use location: builtin"),
    ({"sources": [{"name": "x", "modality": "text", "reader": "text-files"}]}, "give a path"),
    ({"sources": [{"name": "x", "modality": "text", "reader": "pydoc-topics", "weight": -1}]},
     "sources.0.weight"),
    ({"sources": [{"name": "a", "modality": "text", "reader": "pydoc-topics"}] * 2}, "repeated: a"),
    ({"sources": []}, "sources"),
    ({"preset": "huge"}, "unknown preset 'huge'"),
    ({"media": {"image_size": 18}}, "not a multiple of the tiny preset's patch size"),
    ({"packing": {"seq_len": 4}}, "packing.seq_len"),
    ({"colour": "blue"}, "colour"),
    ({"tokenizer": {"sha256": "ab" * 32}}, "sha256 is given but path is not"),
    ({"filters": {"min_chars": 10, "max_chars": 5}}, "min_chars=10 exceeds max_chars=5"),
    ({"packing": {"seq_len": 256}, "synthetic": {"retrieval": 10, "haystack_tokens": 384}},
     "haystack_tokens=384 exceeds packing.seq_len=256"),
])
def test_bad_specs_are_refused_naming_the_field(changes, fragment):
    with pytest.raises(SpecError, match=fragment):
        parse_spec(_spec(**changes))


def test_bad_files_are_refused(tmp_path):
    with pytest.raises(SpecError, match="not one of the built-in specs"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="YAML mapping"):
        load_spec(bad)
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
