"""The model the end-to-end eval tests evaluate was really trained, on data the evals hold out."""

from workers.data.manifest import read_manifest
from workers.evals.heldout import load_heldout


def test_the_tiny_model_learned(trained):
    first, last = sum(trained.losses[:10]) / 10, sum(trained.losses[-10:]) / 10
    assert last < first - 1.5, (first, last)


def test_heldout_data_comes_from_the_manifest_test_split(trained):
    data = load_heldout(str(trained.dataset), "test")
    manifest = read_manifest(str(trained.dataset))
    assert data.name == "evals-test/test" and data.digest == manifest["digest"]
    assert {s.modality for s in data.sequences} == {"text", "audio", "video"}
    assert len(data.canaries) == 3 and all(c["prefix"] and c["secret"] for c in data.canaries)
    assert data.texts and all(len(t) >= 200 for t in data.texts)
