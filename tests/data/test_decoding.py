import codecs
import random

from gradaccum.data.decoding import clean_str, decode_bytes, looks_binary


def test_text_in_many_scripts_is_not_binary():
    assert not looks_binary(b"def f(x):\n\treturn x  # ok\n" * 100)
    assert not looks_binary("Grüße, 日本語, ünïcödé\n".encode() * 100)
    assert not looks_binary("café crème, déjà vu\n".encode("latin-1") * 100)
    assert not looks_binary(b"")


def test_random_bytes_and_executables_are_binary():
    rng = random.Random(0)
    assert looks_binary(bytes(rng.randrange(256) for _ in range(10_000)))
    assert looks_binary(b"\x7fELF\x02\x01\x01" + b"\x00" * 64 + b"\x01\x02\x03" * 100)


def test_a_few_nuls_in_text_are_removed_and_counted():
    decoded = decode_bytes(b"hello\x00 world\x00\n" * 10)
    assert decoded.text == "hello world\n" * 10 and decoded.nuls == 20 and decoded.replaced == 0


def test_invalid_utf8_is_replaced_and_counted_but_a_real_fffd_is_not():
    decoded = decode_bytes(b"ok \xff\xfe bad \xe2\x82 cut " + "\ufffd".encode())
    assert decoded.replaced == 3
    assert decoded.text.count("\ufffd") == 4


def test_bom_and_crlf_and_utf16():
    assert decode_bytes(codecs.BOM_UTF8 + b"a\r\nb").text == "a\nb"
    raw = codecs.BOM_UTF16_LE + "héllo\r\n".encode("utf-16-le")
    assert not looks_binary(raw)
    assert decode_bytes(raw).text == "héllo\n"


def test_clean_str_replaces_lone_surrogates_and_nuls():
    decoded = clean_str("a\ud800b\x00c")
    assert decoded.text == "a?bc" and decoded.replaced == 1 and decoded.nuls == 1
    decoded.text.encode("utf-8")
