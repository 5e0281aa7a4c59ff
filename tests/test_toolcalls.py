"""Tool-call fragments as servers stream them, read into one shape (in process)."""

from app.toolcalls import ToolCallReader, assemble, joined


def read_all(*deltas: list) -> list[dict]:
    reader = ToolCallReader()
    fragments = []
    for entries in deltas:
        fragments += reader.read(entries)
    return fragments


def test_openai_style_pieces_assemble_to_the_exact_arguments():
    fragments = read_all(
        [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "f"}}],
        [{"index": 0, "function": {"arguments": '{"city": "Z'}}],
        [{"index": 0, "function": {"arguments": 'ürich"}'}}],
        [{"index": 1, "id": "call_b", "function": {"name": "g", "arguments": ""}}],
        [{"index": 1, "function": {"arguments": "{}"}}],
    )
    assert fragments[0] == {"index": 0, "id": "call_a", "name": "f", "arguments": ""}
    assert fragments[1] == {"index": 0, "arguments": '{"city": "Z'}
    assert assemble(fragments) == [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "f", "arguments": '{"city": "Zürich"}'},
        },
        {
            "id": "call_b",
            "type": "function",
            "function": {"name": "g", "arguments": "{}"},
        },
    ]


def test_ollama_reusing_index_zero_with_new_ids_makes_separate_calls():
    fragments = read_all(
        [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": '{"a":1}'}}],
        [{"index": 0, "id": "c2", "function": {"name": "f", "arguments": '{"a":2}'}}],
    )
    assert [f["index"] for f in fragments] == [0, 1]
    calls = assemble(fragments)
    assert [c["id"] for c in calls] == ["c1", "c2"]
    assert [c["function"]["arguments"] for c in calls] == ['{"a":1}', '{"a":2}']


def test_a_repeated_id_and_name_on_every_piece_is_one_call():
    fragments = read_all(
        [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": '{"a"'}}],
        [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": ":1}"}}],
    )
    assert fragments[1] == {"index": 0, "arguments": ":1}"}
    assert assemble(fragments)[0]["function"]["arguments"] == '{"a":1}'


def test_several_calls_in_one_delta_keep_their_order():
    fragments = read_all(
        [
            {"index": 0, "id": "c1", "function": {"name": "f", "arguments": ""}},
            {"index": 1, "id": "c2", "function": {"name": "g", "arguments": ""}},
        ],
        [
            {"index": 1, "function": {"arguments": "[2]"}},
            {"index": 0, "function": {"arguments": "[1]"}},
        ],
    )
    calls = assemble(fragments)
    assert [(c["id"], c["function"]["arguments"]) for c in calls] == [
        ("c1", "[1]"),
        ("c2", "[2]"),
    ]


def test_malformed_entries_are_skipped():
    assert read_all(["x", None, {"index": 0}], "not a list") == []


def test_joined_merges_pieces_of_one_call_only():
    first = {"index": 0, "id": "c1", "name": "f", "arguments": "{"}
    assert joined(first, {"index": 0, "arguments": "}"}) == {
        "index": 0,
        "id": "c1",
        "name": "f",
        "arguments": "{}",
    }
    assert joined(first, {"index": 1, "arguments": "}"}) is None
    assert joined(first, {"index": 0, "id": "c2", "arguments": ""}) is None
