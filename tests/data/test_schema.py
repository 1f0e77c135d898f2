from recon3d.data.schema import take_in_turn


def test_take_in_turn_spreads_over_categories_in_the_given_order():
    keys = [f"airplane/a{i}" for i in range(4)] + ["car/c0", "car/c1"] + [f"table/t{i}" for i in range(3)]
    assert take_in_turn(keys, 3) == ["airplane/a0", "car/c0", "table/t0"]
    assert take_in_turn(keys, 5) == ["airplane/a0", "airplane/a1", "car/c0", "car/c1", "table/t0"]
    assert take_in_turn(keys, 8) == [k for k in keys if k != "airplane/a3"]  # cars run out: the others fill in
    assert take_in_turn(keys, 20) == keys and take_in_turn(keys, 0) == [] and take_in_turn([], 4) == []
