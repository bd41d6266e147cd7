import pytest

from feedback import DiskSpool, SpoolWriteError


def test_records_come_back_in_order_and_ack_compacts(tmp_path):
    spool = DiskSpool(tmp_path)
    spool.append([b"a", b"b"])
    spool.append([b"c"])
    assert spool.depth == 3
    head, end = spool.peek(2)
    assert head == [b"a", b"b"]
    spool.ack(end, 2)
    assert spool.depth == 1
    rest, end = spool.peek(10)
    assert rest == [b"c"]
    spool.ack(end, 1)
    assert spool.depth == 0
    assert (tmp_path / "spool.log").stat().st_size == 0


def test_survives_reopen_and_resumes_after_the_cursor(tmp_path):
    spool = DiskSpool(tmp_path)
    spool.append([b"1", b"2", b"3"])
    _, end = spool.peek(1)
    spool.ack(end, 1)
    reopened = DiskSpool(tmp_path)
    assert reopened.depth == 2
    assert reopened.peek(10)[0] == [b"2", b"3"]


def test_torn_last_line_is_cut_on_open(tmp_path):
    DiskSpool(tmp_path).append([b"ok"])
    with (tmp_path / "spool.log").open("ab") as f:
        f.write(b'{"half')
    spool = DiskSpool(tmp_path)
    assert spool.peek(10)[0] == [b"ok"]


def test_newlines_inside_a_record_cannot_split_it(tmp_path):
    spool = DiskSpool(tmp_path)
    spool.append([b"x\ny"])
    assert spool.peek(10)[0] == [b"x y"]


def test_full_or_unwritable_spool_is_a_loud_error(tmp_path):
    spool = DiskSpool(tmp_path, max_bytes=10)
    with pytest.raises(SpoolWriteError, match="full"):
        spool.append([b"0123456789abc"])
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(SpoolWriteError):
        DiskSpool(blocker / "spool")
