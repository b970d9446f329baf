from oasis.engine.textstream import TextStream


def feed_all(stream: TextStream, pieces: list[bytes]) -> str:
    return "".join(stream.feed(p) for p in pieces) + stream.flush()


def test_plain_text_passes_through() -> None:
    assert feed_all(TextStream(), [b"Hel", b"lo", b" world"]) == "Hello world"


def test_multibyte_character_split_over_tokens_is_joined() -> None:
    data = "学习".encode()
    s = TextStream()
    assert s.feed(data[:1]) == ""
    assert s.feed(data[1:4]) == "学"
    assert s.feed(data[4:]) == "习"


def test_stop_string_across_token_boundary_is_never_emitted() -> None:
    s = TextStream(("END",))
    out = [s.feed(b"abc E"), s.feed(b"N"), s.feed(b"D and more")]
    assert "".join(out) == "abc "
    assert s.stopped
    assert s.flush() == ""


def test_partial_stop_prefix_is_released_when_it_does_not_complete() -> None:
    s = TextStream(("END",))
    assert s.feed(b"x E") == "x "
    assert s.feed(b"N") == ""
    assert s.feed(b"d") == "ENd"
    assert not s.stopped


def test_earliest_of_several_stops_wins() -> None:
    s = TextStream(("two", "one"))
    assert s.feed(b"zero one two") == "zero "
    assert s.stopped


def test_held_text_is_released_at_the_end() -> None:
    s = TextStream(("\n\n",))
    assert s.feed(b"last line\n") == "last line"
    assert s.flush() == "\n"


def test_a_character_cut_by_max_tokens_is_dropped_not_garbled() -> None:
    s = TextStream()
    assert s.feed("好".encode() + "学".encode()[:2]) == "好"
    assert s.flush() == ""
