"""Packing work units: whole staging files, in corpus order, sized by characters."""

from workers.data.stages import pack_units, staged_file


def test_units_are_runs_of_whole_files_in_corpus_order():
    chars = {"00000002.000000": 300, "00000000.000000": 500, "00000000.000001": 600,
             "00000001.000000": 10, "99999999.000003": 40}
    units = pack_units("s3://b/_staging", chars, chars_per_unit=1000)
    assert units == [{"files": [staged_file("s3://b/_staging", "00000000.x")]},
                     {"files": [staged_file("s3://b/_staging", k) for k in ("00000001", "00000002",
                                                                          "99999999")]}]
    assert units[0]["files"] == ["s3://b/_staging/staged-00000000.parquet"]


def test_files_without_a_packed_document_are_left_out():
    assert pack_units("/d", {}, 10) == []
    units = pack_units("/d", {"00000004.000000": 0}, chars_per_unit=10)  # no text: still packed
    assert units == [{"files": ["/d/staged-00000004.parquet"]}]
