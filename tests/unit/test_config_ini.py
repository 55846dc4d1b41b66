"""The pgbouncer.ini dialect, byte for byte: comments, blanks, keys, sections, %include."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgfunnel.config.ini import (
    MAX_INCLUDE_DEPTH,
    ConfigError,
    IniEntry,
    IniSection,
    parse_ini,
    read_ini,
)


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", newline="")
    else:
        path.write_bytes(text)
    return path


def entries(tmp_path: Path, text: str | bytes) -> list[tuple[str, str, str, int]]:
    path = write(tmp_path / "p.ini", text)
    return [(e.section, e.key, e.value, e.line) for e in read_ini(path)]


def error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path / "p.ini", text)
    with pytest.raises(ConfigError) as info:
        parse_ini(path)
    return info.value


# --- comments and white space ------------------------------------------------------------------


def test_comment_characters_only_count_at_the_start_of_a_line(tmp_path: Path) -> None:
    got = entries(
        tmp_path,
        "; a comment\n"
        "# another\n"
        "[pgbouncer]\n"
        "server_reset_query = DISCARD ALL ; not a comment\n"
        "logfile = /var/log/p.log # still the value\n"
        "admin_users = ;x\n",
    )
    assert got == [
        ("pgbouncer", "server_reset_query", "DISCARD ALL ; not a comment", 4),
        ("pgbouncer", "logfile", "/var/log/p.log # still the value", 5),
        ("pgbouncer", "admin_users", ";x", 6),
    ]


def test_indented_comments_and_sections_are_recognised(tmp_path: Path) -> None:
    got = entries(tmp_path, "   ; indented comment\n\t# tab\n  [pgbouncer]\n \t listen_port=1\n")
    assert got == [("pgbouncer", "listen_port", "1", 4)]


def test_blanks_around_equals_and_trailing_white_space_are_dropped(tmp_path: Path) -> None:
    got = entries(tmp_path, "[s]\na=1\nb \t=\t 2 \t \nc =\nd = x  y\r\ne = 'q' \"z\"\n")
    assert got == [
        ("s", "a", "1", 2),
        ("s", "b", "2", 3),
        ("s", "c", "", 4),
        ("s", "d", "x  y", 5),
        # Values are verbatim: quotes are not removed and nothing is interpolated.
        ("s", "e", "'q' \"z\"", 6),
    ]


def test_no_interpolation(tmp_path: Path) -> None:
    got = entries(tmp_path, "[s]\na = %(b)s ${b} $b\nb = x\n")
    assert got[0][2] == "%(b)s ${b} $b"


def test_crlf_line_endings(tmp_path: Path) -> None:
    got = entries(tmp_path, "[s]\r\nkey = value\r\n; c\r\nother=2\r\n")
    assert got == [("s", "key", "value", 2), ("s", "other", "2", 4)]


def test_blank_lines_and_missing_final_newline(tmp_path: Path) -> None:
    assert entries(tmp_path, "\n\n[s]\n\n\nk=v") == [("s", "k", "v", 6)]


def test_non_utf8_bytes_do_not_stop_the_reader(tmp_path: Path) -> None:
    got = entries(tmp_path, b"; caf\xe9 latin-1 comment\n[s]\nk = caf\xe9\n")
    assert got[0][1] == "k"
    assert got[0][2].encode("utf-8", "surrogateescape") == b"caf\xe9"


# --- keys --------------------------------------------------------------------------------------


def test_key_case_is_kept(tmp_path: Path) -> None:
    assert entries(tmp_path, "[s]\nListen_Port = 1\n")[0][1] == "Listen_Port"


def test_key_characters(tmp_path: Path) -> None:
    got = entries(tmp_path, "[databases]\n* = host=x\nmy-db.v2_a = host=y\n")
    assert [g[1] for g in got] == ["*", "my-db.v2_a"]


def test_single_quoted_keys_allow_any_character(tmp_path: Path) -> None:
    got = entries(tmp_path, "[databases]\n'my db;#=x' = host=a\n")
    assert got == [("databases", "my db;#=x", "host=a", 2)]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("[s]\nno equals sign here\n", 2, "syntax error: expected '=' after 'no'"),
        ("[s]\nfoo bar = 1\n", 2, "syntax error: expected '=' after 'foo'"),
        ("[s]\n\n\n= value\n", 4, "syntax error: missing key before '='"),
        ('[s]\n"quoted" = x\n', 2, "syntax error: expected 'key = value'"),
        ("[s]\n'' = x\n", 2, "syntax error: empty quoted key"),
        ("[s]\n'open = x\n", 2, "syntax error: unterminated quoted key"),
        ("[s]\n'k' x = 1\n", 2, "syntax error: expected '=' after 'k'"),
        ("\n[pgbouncer\nk=v\n", 2, "syntax error: section header without ']'"),
        ("[s]\n%includex foo\n", 2, "syntax error: expected 'key = value'"),
        ("[s]\n%include\n", 2, "syntax error: expected 'key = value'"),
    ],
)
def test_syntax_errors_name_file_and_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    err = error(tmp_path, text)
    assert err.file == str(tmp_path / "p.ini")
    assert err.line == line
    assert err.message.startswith(message)
    assert str(err).startswith(f"{tmp_path / 'p.ini'}:{line}: {message}")


# --- sections ----------------------------------------------------------------------------------


def test_sections_are_reported_even_when_empty(tmp_path: Path) -> None:
    path = write(tmp_path / "p.ini", "[pgbouncer]\n[databases]\na = host=x\n[Users]\n")
    items = parse_ini(path)
    assert items == [
        IniSection("pgbouncer", str(path), 1),
        IniSection("databases", str(path), 2),
        IniEntry("databases", "a", "host=x", str(path), 3),
        # Section names keep their case; the loader decides what is valid.
        IniSection("Users", str(path), 4),
    ]


def test_entry_before_any_section_has_an_empty_section(tmp_path: Path) -> None:
    assert entries(tmp_path, "k = v\n[s]\n") == [("", "k", "v", 1)]


def test_text_after_the_closing_bracket_is_read_as_a_new_line(tmp_path: Path) -> None:
    # PgBouncer carries on reading right after ']': a comment or even a key may follow.
    assert entries(tmp_path, "[s] ; comment\n[t] k = v\n") == [("t", "k", "v", 2)]
    err = error(tmp_path, "[s] junk\n")
    assert (err.line, err.message) == (1, "syntax error: expected '=' after 'junk' in 'junk'")


def test_section_name_is_taken_verbatim(tmp_path: Path) -> None:
    path = write(tmp_path / "p.ini", "[ pgbouncer ]\n")
    assert parse_ini(path) == [IniSection(" pgbouncer ", str(path), 1)]


# --- %include ----------------------------------------------------------------------------------


def test_include_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "cwd").mkdir()
    write(tmp_path / "cwd" / "inc.ini", "from_cwd = 1\n")
    write(tmp_path / "conf" / "inc.ini", "from_conf_dir = 1\n")
    main = write(tmp_path / "conf" / "main.ini", "[s]\n%include inc.ini\n")
    monkeypatch.chdir(tmp_path / "cwd")
    assert [(e.key, e.file) for e in read_ini(main)] == [("from_cwd", "inc.ini")]


def test_nested_includes_keep_order_sections_and_line_numbers(tmp_path: Path) -> None:
    c = write(tmp_path / "c.ini", "\n\nc_key = 3\n[after_c]\n")
    b = write(tmp_path / "b.ini", f"b_key = 2\n\t%include\t {c}  \nb_tail = 4\n")
    a = write(tmp_path / "a.ini", f"[s]\na_key = 1\n%include {b}\na_tail = 5\n")
    got = [(e.section, e.key, Path(e.file).name, e.line) for e in read_ini(a)]
    assert got == [
        ("s", "a_key", "a.ini", 2),
        ("s", "b_key", "b.ini", 1),
        ("s", "c_key", "c.ini", 3),
        # A section opened inside an include stays open after it, as in PgBouncer.
        ("after_c", "b_tail", "b.ini", 3),
        ("after_c", "a_tail", "a.ini", 4),
    ]


def test_missing_include_names_the_including_file_and_line(tmp_path: Path) -> None:
    main = write(tmp_path / "main.ini", "[s]\nk = v\n%include /nonexistent/x.ini\n")
    with pytest.raises(ConfigError) as info:
        parse_ini(main)
    err = info.value
    assert (err.file, err.line) == (str(main), 3)
    assert str(err) == (
        f"{main}:3: could not read include file '/nonexistent/x.ini': No such file or directory"
    )


def test_error_inside_an_include_names_the_included_file(tmp_path: Path) -> None:
    inc = write(tmp_path / "inc.ini", "ok = 1\nbroken line\n")
    main = write(tmp_path / "main.ini", f"[s]\n%include {inc}\n")
    with pytest.raises(ConfigError) as info:
        parse_ini(main)
    assert (info.value.file, info.value.line) == (str(inc), 2)


def test_include_loop_is_refused(tmp_path: Path) -> None:
    a = tmp_path / "a.ini"
    b = write(tmp_path / "b.ini", f"%include {a}\n")
    write(a, f"[s]\n%include {b}\n")
    with pytest.raises(ConfigError) as info:
        parse_ini(a)
    assert (info.value.file, info.value.line) == (str(b), 1)
    assert "%include loop" in info.value.message


def test_include_depth_is_limited_like_pgbouncer(tmp_path: Path) -> None:
    # Files 0..10 nest fine (ten levels of %include); an eleventh level is refused.
    def chain(levels: int) -> Path:
        for i in range(levels, -1, -1):
            nxt = f"%include {tmp_path / f'f{i + 1}.ini'}\n" if i < levels else ""
            write(tmp_path / f"f{i}.ini", f"[s]\nk{i} = {i}\n{nxt}")
        return tmp_path / "f0.ini"

    assert len(read_ini(chain(MAX_INCLUDE_DEPTH))) == MAX_INCLUDE_DEPTH + 1
    with pytest.raises(ConfigError) as info:
        parse_ini(chain(MAX_INCLUDE_DEPTH + 1))
    assert info.value.file == str(tmp_path / f"f{MAX_INCLUDE_DEPTH}.ini")
    assert info.value.line == 3
    assert "nested more than 10 levels" in info.value.message


def test_missing_top_level_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_ini(tmp_path / "nope.ini")
    assert info.value.line == 0
    assert str(info.value) == (
        f"{tmp_path / 'nope.ini'}: could not read configuration file: No such file or directory"
    )


def test_config_error_attributes() -> None:
    err = ConfigError("f.ini", 7, "bad thing")
    assert (err.file, err.line, err.message, str(err)) == (
        "f.ini",
        7,
        "bad thing",
        "f.ini:7: bad thing",
    )
