from recon3d.data.schema import take_in_turn


def test_take_in_turn_spreads_over_categories_in_the_given_order():
    keys = [f"airplane/a{i}" for i in range(4)] + ["car/c0", "car/c1"] + [f"table/t{i}" for i in range(3)]
    assert take_in_turn(keys, 3) == ["airplane/a0", "car/c0", "table/t0"]
    assert take_in_turn(keys, 5) == ["airplane/a0", "airplane/a1", "car/c0", "car/c1", "table/t0"]
    assert take_in_turn(keys, 8) == [k for k in keys if k != "airplane/a3"]  # cars run out: the others fill in
    assert take_in_turn(keys, 20) == keys and take_in_turn(keys, 0) == [] and take_in_turn([], 4) == []


def test_a_view_that_inflates_beyond_its_declared_size_is_refused_without_inflating_it():
    """A 2 MB member whose table says 32x32x4 but whose stream inflates to 300 MB: refused after 4097 bytes."""
    import struct
    import tracemalloc
    import zlib

    import numpy as np
    import pytest

    from recon3d.data import schema

    good = schema.pack_views([np.full((32, 32, 4), 7, np.uint8)])
    assert schema.view_image({schema.VIEWS: good}, 0).shape == (32, 32, 4)
    bomb = zlib.compress(b"\0" * (300 * 2**20), 9)
    member = schema._VIEWS_HEAD.pack(schema._VIEWS_MAGIC, 32, 32, 4, 1) + struct.pack("<I", len(bomb)) + bomb
    tracemalloc.start()
    with pytest.raises(ValueError, match="view 0: inflates to more than 4096 bytes, expected 32x32x4"):
        schema.view_image({schema.VIEWS: member}, 0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 * 2**20
    cut = zlib.compress(np.full(4096, 7, np.uint8).tobytes())[:-6]  # the stream's end cut off
    short = schema._VIEWS_HEAD.pack(schema._VIEWS_MAGIC, 32, 32, 4, 1) + struct.pack("<I", len(cut)) + cut
    with pytest.raises(ValueError, match="view 0: inflates to"):
        schema.view_image({schema.VIEWS: short}, 0)
    huge = schema._VIEWS_HEAD.pack(schema._VIEWS_MAGIC, 65535, 65535, 4, 1) + struct.pack("<I", len(bomb)) + bomb
    with pytest.raises(ValueError, match="declared 65535x65535x4, more than a view can be"):
        schema.view_image({schema.VIEWS: huge}, 0)
