"""TNTP reader/writer: the bundled SiouxFalls and Braess files, a round trip, and every error."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from poa_jax.errors import InputError
from poa_jax.tntp import (
    bundled,
    check_connected,
    reachable,
    read_flows,
    read_net,
    read_trips,
    write_flows,
)

SF_NET, SF_TRIPS, SF_FLOW = bundled("SiouxFalls")
BR_NET, BR_TRIPS, BR_FLOW = bundled("Braess-Example")


def _edit(src, dst, replace: dict[int, str | None]):
    """Copy ``src`` to ``dst`` with 1-based lines replaced (``None``: deleted)."""
    lines = src.read_text().splitlines()
    out = [replace.get(i + 1, line) for i, line in enumerate(lines)]
    dst.write_text("\n".join(x for x in out if x is not None) + "\n")
    return dst


def _raises(msg: str):
    return pytest.raises(InputError, match=re.escape(msg))


# ------------------------------------------------------------------------------------------
# The bundled files
# ------------------------------------------------------------------------------------------


def test_bundled_paths():
    assert SF_NET.name == "SiouxFalls_net.tntp" and SF_NET.is_file()
    assert SF_TRIPS.name == "SiouxFalls_trips.tntp" and SF_FLOW.name == "SiouxFalls_flow.tntp"
    assert (BR_NET.name, BR_TRIPS.name, BR_FLOW) == ("Braess_net.tntp", "Braess_trips.tntp", None)
    assert (SF_NET.parent / "README.md").is_file() and (BR_NET.parent / "README.md").is_file()
    with _raises("bundled TNTP network 'Nowhere': unknown"):
        bundled("Nowhere")


def test_siouxfalls_net():
    net = read_net(SF_NET)
    assert (net.num_nodes, net.num_links, net.num_zones, net.first_thru_node) == (24, 76, 24, 1)
    assert (net.toll_factor, net.distance_factor) == (0.0, 0.0)
    assert net.metadata["NUMBER OF LINKS"] == "76"
    assert net.metadata_lines["END OF METADATA"] == 6
    # first row:  1  2  25900.20064  6  6  0.15  4  0  0  1  ;   (line 10)
    row0 = [net.init_node[0], net.term_node[0], net.capacity[0], net.length[0]]
    row0 += [net.free_flow_time[0], net.b[0], net.power[0], net.speed[0], net.toll[0]]
    assert row0 == [1, 2, 25900.20064, 6.0, 6.0, 0.15, 4.0, 0.0, 0.0]
    assert net.link_type[0] == 1 and net.link_lines[0] == 10
    # last row:  24  23  5078.508436  2  2  0.15  4  0  0  1  ;   (line 85)
    rowl = [net.init_node[-1], net.term_node[-1], net.capacity[-1], net.free_flow_time[-1]]
    assert rowl == [24, 23, 5078.508436, 2.0] and net.link_lines[-1] == 85
    assert net.init_node.dtype == np.int64 and net.capacity.dtype == np.float64
    assert np.all(net.b == 0.15) and np.all(net.power == 4.0)
    assert not net.capacity.flags.writeable
    # BPR: t = fft (1 + b (f/c)^p)
    assert np.array_equal(net.travel_time(np.zeros(76)), net.free_flow_time)
    np.testing.assert_allclose(net.travel_time(net.capacity), 1.15 * net.free_flow_time, 1e-15)
    np.testing.assert_allclose(net.travel_time(2 * net.capacity)[0], 6.0 * (1 + 0.15 * 16))
    assert np.array_equal(net.generalized_cost(np.zeros(76)), net.free_flow_time)


def test_siouxfalls_trips():
    trips = read_trips(SF_TRIPS)
    assert trips.num_zones == 24 and trips.matrix.shape == (24, 24)
    assert trips.total_flow == 360600.0 == trips.matrix.sum()
    # "Origin 1" (line 6), line 8: "... 10 :   1300.0;"
    assert trips.matrix[0, 9] == 1300.0 and trips.line_of[0, 9] == 8
    assert trips.matrix[0, 0] == 0.0 and trips.matrix[0, 1] == 100.0
    # "Origin 2", "6 : 400.0"; "Origin 24" (line 167), "22 : 1100.0; 23 : 700.0" (line 172)
    assert trips.matrix[1, 5] == 400.0
    assert trips.matrix[23, 21] == 1100.0 and trips.matrix[23, 22] == 700.0
    assert trips.line_of[23, 22] == 172
    assert np.all(trips.line_of > 0)  # every pair is listed


def test_siouxfalls_flows_match_bpr():
    fl = read_flows(SF_FLOW)
    assert fl.volume.shape == (76,)
    assert (fl.init_node[0], fl.term_node[0], fl.volume[0]) == (1, 2, 4494.6576464564205)
    assert fl.cost[0] == 6.0008162373543197
    # line 30: "10 	16 	11047.093881273468 	20.084809978398383"
    assert (fl.init_node[28], fl.term_node[28]) == (10, 16)
    assert fl.volume[28] == 11047.093881273468
    assert fl.volume[-1] == 7861.8332437957288
    net = read_net(SF_NET)
    assert np.array_equal(fl.init_node, net.init_node)
    assert np.array_equal(fl.term_node, net.term_node)
    np.testing.assert_allclose(net.travel_time(fl.volume), fl.cost, rtol=1e-12)


def test_braess_exact():
    net = read_net(BR_NET)
    assert (net.num_zones, net.num_nodes, net.num_links, net.first_thru_node) == (2, 4, 5, 1)
    assert net.init_node.tolist() == [1, 1, 3, 3, 4]
    assert net.term_node.tolist() == [3, 4, 2, 4, 2]
    assert net.capacity.tolist() == [1.0] * 5 and net.length.tolist() == [100.0] * 5
    assert net.free_flow_time.tolist() == [1e-8, 50.0, 50.0, 10.0, 1e-8]
    assert net.b.tolist() == [1e9, 0.02, 0.02, 0.1, 1e9]
    assert net.power.tolist() == [1.0] * 5 and net.link_type.tolist() == [1] * 5
    assert net.link_lines.tolist() == [10, 11, 12, 13, 14]
    trips = read_trips(BR_TRIPS)
    assert trips.num_zones == 2 and trips.total_flow == 6.0
    assert trips.matrix.tolist() == [[0.0, 6.0], [0.0, 0.0]]
    assert trips.line_of.tolist() == [[6, 6], [0, 0]]
    check_connected(net, trips)


# ------------------------------------------------------------------------------------------
# Writer
# ------------------------------------------------------------------------------------------


def test_write_read_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.random(7) * 1e4
    cost = rng.random(7) * 1e-3
    vol[0], cost[0] = 0.0, 1.0 / 3.0
    i, j = np.arange(1, 8), np.arange(2, 9)
    p = tmp_path / "out_flow.tntp"
    write_flows(p, i, j, vol, cost)
    text = p.read_text().splitlines()
    assert text[0] == "From \tTo \tVolume \tCost "
    assert text[1].startswith("1 \t2 \t0 \t0.33333333333333331")
    back = read_flows(p)
    assert np.array_equal(back.init_node, i) and np.array_equal(back.term_node, j)
    assert np.array_equal(back.volume, vol) and np.array_equal(back.cost, cost)


def test_write_siouxfalls_same_values(tmp_path):
    fl = read_flows(SF_FLOW)
    p = tmp_path / "sf_flow.tntp"
    write_flows(p, fl.init_node, fl.term_node, fl.volume, fl.cost)
    back = read_flows(p)
    assert np.array_equal(back.volume, fl.volume) and np.array_equal(back.cost, fl.cost)


def test_write_flows_errors(tmp_path):
    p = tmp_path / "x_flow.tntp"
    with _raises("write_flows: volume has 2 entries, init_node has 3"):
        write_flows(p, [1, 2, 3], [2, 3, 1], [1.0, 2.0], [1.0, 1.0, 1.0])
    with _raises("write_flows: cost[1] = nan: must be finite, >= 0"):
        write_flows(p, [1, 2], [2, 3], [1.0, 2.0], [1.0, np.nan])
    with _raises("write_flows: term_node[0] = 0.0: must be an integer >= 1"):
        write_flows(p, [1], [0], [1.0], [1.0])
    assert not p.exists()


# ------------------------------------------------------------------------------------------
# Errors: net file
# ------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with _raises("nope_net.tntp: no such file"):
        read_net(tmp_path / "nope_net.tntp")
    with _raises("nope_trips.tntp: no such file"):
        read_trips(tmp_path / "nope_trips.tntp")
    with _raises("nope_flow.tntp: no such file"):
        read_flows(tmp_path / "nope_flow.tntp")


@pytest.mark.parametrize(
    ("lineno", "key", "end"),
    [(2, "NUMBER OF NODES", 5), (4, "NUMBER OF LINKS", 5), (1, "NUMBER OF ZONES", 5)],
)
def test_net_missing_metadata(tmp_path, lineno, key, end):
    p = _edit(BR_NET, tmp_path / "Braess_net.tntp", {lineno: None})
    with _raises(f"Braess_net.tntp:{end}: missing <{key}> before <END OF METADATA>"):
        read_net(p)


def test_net_first_thru_node_defaults_to_1(tmp_path):
    p = _edit(BR_NET, tmp_path / "Braess_net.tntp", {3: None})
    net = read_net(p)
    assert net.first_thru_node == 1 and "FIRST THRU NODE" not in net.metadata


def test_net_missing_end_of_metadata(tmp_path):
    p = _edit(BR_NET, tmp_path / "Braess_net.tntp", {6: None})
    # lines 6-7 blank, 8 the '~' column header, 9 the first link row
    with _raises("Braess_net.tntp:9: data line before <END OF METADATA>"):
        read_net(p)
    q = tmp_path / "only_net.tntp"
    q.write_text("<NUMBER OF ZONES> 2\n<NUMBER OF NODES> 4\n")
    with _raises("only_net.tntp:2: end of file before <END OF METADATA>"):
        read_net(q)


def test_net_bad_metadata_value(tmp_path):
    p = _edit(BR_NET, tmp_path / "Braess_net.tntp", {2: "<NUMBER OF NODES> four"})
    with _raises("Braess_net.tntp:2: <NUMBER OF NODES> = 'four': must be an integer >= 1"):
        read_net(p)
    p = _edit(BR_NET, tmp_path / "Braess_net.tntp", {1: "<NUMBER OF ZONES> 5"})
    with _raises("Braess_net.tntp:1: <NUMBER OF ZONES> = '5': must be an integer in 1..4"):
        read_net(p)
    p = _edit(BR_NET, tmp_path / "Braess_net.tntp", {3: "<FIRST THRU NODE> 0"})
    with _raises("Braess_net.tntp:3: <FIRST THRU NODE> = '0': must be an integer in 1..4"):
        read_net(p)
    p = _edit(BR_NET, tmp_path / "Braess_net.tntp", {3: "<NUMBER OF NODES> 4"})
    with _raises("Braess_net.tntp:3: <NUMBER OF NODES> given twice (first on line 2)"):
        read_net(p)


def test_net_toll_and_distance_factors(tmp_path):
    p = _edit(
        BR_NET,
        tmp_path / "Braess_net.tntp",
        {7: "<TOLL FACTOR> 0.5", 8: "<DISTANCE FACTOR> 0.25", 6: None},
    )
    # move <END OF METADATA> below the two new entries
    lines = p.read_text().splitlines()
    lines.insert(7, "<END OF METADATA>")
    p.write_text("\n".join(lines) + "\n")
    net = read_net(p)
    assert (net.toll_factor, net.distance_factor) == (0.5, 0.25)
    assert np.array_equal(net.fixed_cost, np.full(5, 25.0))  # 0.5·0 + 0.25·100
    assert np.array_equal(net.generalized_cost(np.zeros(5)), net.free_flow_time + 25.0)
    lines[5] = "<TOLL FACTOR> -1"
    p.write_text("\n".join(lines) + "\n")
    with _raises("Braess_net.tntp:6: <TOLL FACTOR> = '-1': must be a finite number >= 0"):
        read_net(p)


def test_net_no_link_rows(tmp_path):
    p = _edit(BR_NET, tmp_path / "Braess_net.tntp", {k: None for k in range(10, 15)})
    with _raises("Braess_net.tntp: no link rows after <END OF METADATA> (line 6)"):
        read_net(p)


def test_net_link_count_mismatch(tmp_path):
    p = _edit(BR_NET, tmp_path / "Braess_net.tntp", {14: None})
    with _raises("Braess_net.tntp:4: <NUMBER OF LINKS> = 5, but the file has 4 link rows"):
        read_net(p)


def test_net_non_numeric_field(tmp_path):
    p = _edit(
        BR_NET, tmp_path / "Braess_net.tntp", {11: "\t1\t4\tabc\t100\t50\t0.02\t1\t0\t0\t1\t;"}
    )
    with _raises("Braess_net.tntp:11: capacity = 'abc': not a number"):
        read_net(p)
    p = _edit(BR_NET, tmp_path / "Braess_net.tntp", {11: "\t1\t4\t1\t100\tnan\t0.02\t1\t0\t0\t1;"})
    with _raises("Braess_net.tntp:11: free_flow_time = 'nan': must be finite"):
        read_net(p)
    p = _edit(BR_NET, tmp_path / "Braess_net.tntp", {12: "\t3\t2.5\t1\t100\t50\t0.02\t1\t0\t0\t1;"})
    with _raises("Braess_net.tntp:12: term_node = '2.5': must be an integer"):
        read_net(p)


def test_net_wrong_field_count(tmp_path):
    p = _edit(BR_NET, tmp_path / "Braess_net.tntp", {13: "\t3\t4\t1\t100\t10\t0.1\t1\t0\t0;"})
    with _raises("Braess_net.tntp:13: expected 10 fields (init_node term_node capacity"):
        read_net(p)


@pytest.mark.parametrize("node", ["0", "5"])
def test_net_unknown_node(tmp_path, node):
    p = _edit(BR_NET, tmp_path / "Braess_net.tntp", {10: f"\t1\t{node}\t1\t100\t0\t1\t1\t0\t0\t1;"})
    with _raises(f"Braess_net.tntp:10: term_node = {node}: unknown node, must be in 1..4"):
        read_net(p)


@pytest.mark.parametrize(
    ("col", "name", "value", "rule"),
    [
        (2, "capacity", "-5", "must be > 0"),
        (2, "capacity", "0", "must be > 0"),
        (3, "length", "-1", "must be >= 0"),
        (4, "free_flow_time", "-0.5", "must be >= 0"),
        (5, "b", "-0.15", "must be >= 0"),
        (6, "power", "-4", "must be >= 0"),
        (7, "speed", "-30", "must be >= 0"),
        (8, "toll", "-2", "must be >= 0"),
    ],
)
def test_net_negative_fields(tmp_path, col, name, value, rule):
    fields = ["3", "4", "1", "100", "10", "0.1", "1", "0", "0", "1"]
    fields[col] = value
    p = _edit(BR_NET, tmp_path / "Braess_net.tntp", {13: "\t" + "\t".join(fields) + "\t;"})
    with _raises(f"Braess_net.tntp:13: {name} = {float(value)!r}: {rule}"):
        read_net(p)


# ------------------------------------------------------------------------------------------
# Errors: trips and flow files
# ------------------------------------------------------------------------------------------


def test_trips_missing_metadata(tmp_path):
    p = _edit(BR_TRIPS, tmp_path / "Braess_trips.tntp", {1: None})
    with _raises("Braess_trips.tntp:2: missing <NUMBER OF ZONES> before <END OF METADATA>"):
        read_trips(p)
    p = _edit(BR_TRIPS, tmp_path / "Braess_trips.tntp", {3: None})
    with _raises("Braess_trips.tntp:4: data line before <END OF METADATA>"):
        read_trips(p)


def test_trips_no_origin_blocks(tmp_path):
    p = _edit(BR_TRIPS, tmp_path / "Braess_trips.tntp", {5: None, 6: None})
    with _raises("Braess_trips.tntp: no 'Origin' blocks after <END OF METADATA> (line 3)"):
        read_trips(p)
    p = _edit(BR_TRIPS, tmp_path / "Braess_trips.tntp", {5: None})
    with _raises("Braess_trips.tntp:5: entry before the first 'Origin' line"):
        read_trips(p)


def test_trips_unknown_zone(tmp_path):
    p = _edit(BR_TRIPS, tmp_path / "Braess_trips.tntp", {6: "    1 :  0.0;    3 :  6.0;"})
    with _raises("Braess_trips.tntp:6: destination = 3: unknown zone, must be in 1..2"):
        read_trips(p)
    p = _edit(BR_TRIPS, tmp_path / "Braess_trips.tntp", {5: "Origin \t0 "})
    with _raises("Braess_trips.tntp:5: origin = 0: unknown zone, must be in 1..2"):
        read_trips(p)


def test_trips_bad_entries(tmp_path):
    p = _edit(BR_TRIPS, tmp_path / "Braess_trips.tntp", {6: "    1 :  0.0;    2 :  -6.0;"})
    with _raises("Braess_trips.tntp:6: demand[1 -> 2] = -6.0: must be >= 0"):
        read_trips(p)
    p = _edit(BR_TRIPS, tmp_path / "Braess_trips.tntp", {6: "    1 :  0.0;    2 :  six;"})
    with _raises("Braess_trips.tntp:6: demand[1 -> 2] = 'six': not a number"):
        read_trips(p)
    p = _edit(BR_TRIPS, tmp_path / "Braess_trips.tntp", {6: "    1 :  0.0;    2   6.0;"})
    with _raises("Braess_trips.tntp:6: expected 'destination : demand', got '2   6.0'"):
        read_trips(p)
    p = _edit(BR_TRIPS, tmp_path / "Braess_trips.tntp", {7: "    2 :  0.0;"})
    with _raises("Braess_trips.tntp:7: demand[1 -> 2] given twice (first on line 6)"):
        read_trips(p)


def test_trips_total_flow(tmp_path):
    p = _edit(BR_TRIPS, tmp_path / "Braess_trips.tntp", {2: "<TOTAL OD FLOW>   7.0"})
    with _raises("Braess_trips.tntp:2: <TOTAL OD FLOW> = 7.0, but the entries sum to 6.0"):
        read_trips(p)
    p = _edit(BR_TRIPS, tmp_path / "Braess_trips.tntp", {2: "<TOTAL OD FLOW>   6.001"})
    with pytest.warns(UserWarning, match=r"Braess_trips\.tntp:2: <TOTAL OD FLOW> = 6\.001"):
        assert read_trips(p).total_flow == 6.001
    p = _edit(BR_TRIPS, tmp_path / "Braess_trips.tntp", {2: "<TOTAL OD FLOW>   6.000000001"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_trips(p)
    p = _edit(BR_TRIPS, tmp_path / "Braess_trips.tntp", {2: None})
    assert read_trips(p).total_flow is None


def test_flows_errors(tmp_path):
    p = _edit(SF_FLOW, tmp_path / "SiouxFalls_flow.tntp", {1: "From \tTo \tVolume "})
    with _raises("SiouxFalls_flow.tntp:1: expected the header 'From To Volume Cost'"):
        read_flows(p)
    p = _edit(SF_FLOW, tmp_path / "SiouxFalls_flow.tntp", {3: "1 \t3 \t-8119.0 \t4.0 "})
    with _raises("SiouxFalls_flow.tntp:3: Volume = -8119.0: must be >= 0"):
        read_flows(p)
    p = _edit(SF_FLOW, tmp_path / "SiouxFalls_flow.tntp", {4: "2 \t1 \tx \t4.0 "})
    with _raises("SiouxFalls_flow.tntp:4: Volume = 'x': not a number"):
        read_flows(p)
    p = _edit(SF_FLOW, tmp_path / "SiouxFalls_flow.tntp", {4: "2 \t1 \t4.0 "})
    with _raises("SiouxFalls_flow.tntp:4: expected 4 fields (From To Volume Cost), got 3"):
        read_flows(p)
    p = _edit(SF_FLOW, tmp_path / "SiouxFalls_flow.tntp", {k: None for k in range(2, 78)})
    with _raises("SiouxFalls_flow.tntp: no link rows after the header"):
        read_flows(p)


# ------------------------------------------------------------------------------------------
# Connectivity
# ------------------------------------------------------------------------------------------

_TOY_NET = """<NUMBER OF ZONES> {zones}
<NUMBER OF NODES> {nodes}
<FIRST THRU NODE> {ftn}
<NUMBER OF LINKS> {links}
<END OF METADATA>
~ init term cap len fft b power speed toll type ;
{rows}
"""


def _toy(tmp_path, name, zones, nodes, ftn, arcs):
    rows = "\n".join(f"\t{a}\t{b}\t1\t1\t1\t0.15\t4\t0\t0\t1\t;" for a, b in arcs)
    p = tmp_path / name
    text = _TOY_NET.format(zones=zones, nodes=nodes, ftn=ftn, links=len(arcs), rows=rows)
    p.write_text(text)
    return read_net(p)


def _toy_trips(tmp_path, name, blocks: dict[int, dict[int, float]], zones):
    total = sum(sum(b.values()) for b in blocks.values())
    text = f"<NUMBER OF ZONES> {zones}\n<TOTAL OD FLOW> {total}\n<END OF METADATA>\n\n"
    for o, dests in blocks.items():
        text += f"Origin \t{o}\n" + "".join(f"  {d} : {v};" for d, v in dests.items()) + "\n\n"
    p = tmp_path / name
    p.write_text(text)
    return read_trips(p)


def test_reachable_siouxfalls_and_braess():
    sf = read_net(SF_NET)
    r = reachable(sf)
    assert r.shape == (24, 24) and r.all()
    check_connected(sf, read_trips(SF_TRIPS))
    br = read_net(BR_NET)
    assert reachable(br).tolist() == [[True] * 4, [False, True, False, False]]


def test_disconnected_toy_raises(tmp_path):
    # zones 1..3; 1 -> 4 -> 2 only: nothing reaches zone 3, and zone 3 reaches nothing
    net = _toy(tmp_path, "toy_net.tntp", 3, 4, 4, [(1, 4), (4, 2)])
    r = reachable(net)
    assert r.tolist() == [
        [True, True, False, True],
        [False, True, False, False],
        [False, False, True, False],
    ]
    trips = _toy_trips(tmp_path, "toy_trips.tntp", {1: {2: 5.0}, 2: {1: 0.0, 3: 2.0}}, 3)
    # line 5 "Origin 1", 6: "2 : 5.0;", 8: "Origin 2", 9: "1 : 0.0;  3 : 2.0;"
    with _raises(
        "toy_trips.tntp:9: demand 2.0 from zone 2 to zone 3, but no path connects them in "
        "toy_net.tntp"
    ):
        check_connected(net, trips)
    ok = _toy_trips(tmp_path, "ok_trips.tntp", {1: {2: 5.0}, 3: {3: 1.0}}, 3)
    check_connected(net, ok)  # intra-zonal demand needs no path


def test_route_through_centroid_raises(tmp_path):
    # zones 1..3 are centroids (first thru node 4): 1 -> 3 -> 2 passes through centroid 3
    arcs = [(1, 3), (3, 2), (1, 4), (4, 3)]
    net = _toy(tmp_path, "cent_net.tntp", 3, 4, 4, arcs)
    assert reachable(net)[0].tolist() == [True, False, True, True]
    trips = _toy_trips(tmp_path, "cent_trips.tntp", {1: {3: 1.0, 2: 4.0}}, 3)
    with _raises("cent_trips.tntp:6: demand 4.0 from zone 1 to zone 2, but no path connects"):
        check_connected(net, trips)
    # the same graph with every node a thru node is connected
    net1 = _toy(tmp_path, "thru_net.tntp", 3, 4, 1, arcs)
    assert reachable(net1)[0].all()
    check_connected(net1, trips)


def test_first_offender_in_file_order_and_count(tmp_path):
    net = _toy(tmp_path, "iso_net.tntp", 3, 3, 1, [(1, 2)])
    trips = _toy_trips(tmp_path, "iso_trips.tntp", {3: {1: 1.0}, 1: {3: 2.0, 2: 1.0}}, 3)
    with _raises("iso_trips.tntp:6: demand 1.0 from zone 3 to zone 1, but no path connects them"):
        check_connected(net, trips)
    with _raises("(and 1 more OD pairs)"):
        check_connected(net, trips)


def test_check_connected_zone_mismatch(tmp_path):
    net = _toy(tmp_path, "z_net.tntp", 2, 3, 1, [(1, 2), (2, 1)])
    trips = _toy_trips(tmp_path, "z_trips.tntp", {1: {2: 1.0}}, 3)
    with _raises("z_trips.tntp:1: <NUMBER OF ZONES> = 3, but z_net.tntp has 2 zones"):
        check_connected(net, trips)


def _naive_reachable(n, zones, ftn, arcs):
    out = np.zeros((zones, n), dtype=bool)
    for o in range(1, zones + 1):
        seen, stack = {o}, [o]
        while stack:
            u = stack.pop()
            if u != o and u < ftn:
                continue  # a centroid is not passed through
            for a, b in arcs:
                if a == u and b not in seen:
                    seen.add(b)
                    stack.append(b)
        out[o - 1, [v - 1 for v in seen]] = True
    return out


@pytest.mark.parametrize("seed", range(4))
def test_reachable_matches_naive_search(tmp_path, seed):
    rng = np.random.default_rng(seed)
    n, zones, ftn = 12, 5, int(rng.integers(1, 7))
    arcs = [tuple(int(x) for x in rng.integers(1, n + 1, 2)) for _ in range(18)]
    net = _toy(tmp_path, f"rand{seed}_net.tntp", zones, n, ftn, arcs)
    assert np.array_equal(reachable(net), _naive_reachable(n, zones, ftn, arcs))


# ------------------------------------------------------------------------------------------
# read_tntp / from_tntp: what a graph game cannot use is named at read time
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scale", "msg"),
    [
        ("x", "demand_scale = 'x': must be a number or an array of numbers"),
        (-1, "demand_scale = -1.0: must be finite and >= 0"),
        ([1.0, np.nan], "demand_scale[1] = nan: must be finite and >= 0"),
        ([], "demand_scale has shape (0,): empty batch"),
    ],
)
def test_read_tntp_bad_demand_scale(scale, msg):
    from poa_jax import read_tntp

    with _raises(msg):
        read_tntp(BR_NET, BR_TRIPS, demand_scale=scale)


def test_read_tntp_self_loop_names_file_line(tmp_path):
    from poa_jax import read_tntp

    _toy(tmp_path, "loop_net.tntp", 2, 3, 1, [(1, 3), (3, 3), (3, 2)])
    trips = _toy_trips(tmp_path, "loop_trips.tntp", {1: {2: 1.0}}, 2)
    # rows start at line 7
    with _raises("loop_net.tntp:8: link 3 -> 3 is a self-loop"):
        read_tntp(tmp_path / "loop_net.tntp", trips.path)


def test_read_tntp_tiny_capacity_names_file_line(tmp_path):
    from poa_jax import read_tntp

    net = _edit(BR_NET, tmp_path / "cap_net.tntp", {})
    lines = net.read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if line.strip().startswith("1\t"))
    fields = lines[k].split("\t")
    fields[3], fields[7] = "1e-300", "4"  # capacity, power (after the leading tab)
    lines[k] = "\t".join(fields)
    net.write_text("\n".join(lines) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from the overflow either
        with pytest.raises(
            InputError, match=rf"cap_net.tntp:{k + 1}: fft\*b/capacity\^power = inf"
        ):
            read_tntp(net, BR_TRIPS)


def test_read_tntp_only_intrazonal_demand_names_trips_file(tmp_path):
    from poa_jax import read_tntp

    _toy(tmp_path, "iz_net.tntp", 2, 3, 1, [(1, 3), (3, 2)])
    trips = _toy_trips(tmp_path, "iz_trips.tntp", {1: {1: 5.0, 2: 0.0}}, 2)
    with _raises("iz_trips.tntp:6: the only positive demand is intra-zonal"):
        read_tntp(tmp_path / "iz_net.tntp", trips.path)


def test_read_tntp_od_pairs_sorted_not_in_file_order(tmp_path):
    from poa_jax import read_tntp

    _toy(tmp_path, "o_net.tntp", 3, 3, 1, [(1, 2), (2, 3), (3, 1)])
    trips = _toy_trips(tmp_path, "o_trips.tntp", {3: {2: 1.0, 1: 2.0}, 1: {3: 3.0, 2: 4.0}}, 3)
    g = read_tntp(tmp_path / "o_net.tntp", trips.path)
    assert list(zip(g.origins.tolist(), g.destinations.tolist(), strict=True)) == [
        (0, 1), (0, 2), (2, 0), (2, 1)
    ]  # fmt: skip
    np.testing.assert_array_equal(g.demand, [4.0, 3.0, 2.0, 1.0])


def test_byte_order_mark_is_not_data(tmp_path):
    """A net file saved with a UTF-8 byte-order mark reads as without one (it used to say
    'data line before <END OF METADATA>' about its first, metadata, line)."""
    net = tmp_path / "B_net.tntp"
    net.write_bytes(b"\xef\xbb\xbf" + BR_NET.read_bytes())
    a, b = read_net(net), read_net(BR_NET)
    assert a.num_nodes == b.num_nodes and np.array_equal(a.capacity, b.capacity)


def test_trips_with_no_positive_demand(tmp_path):
    import poa_jax as pj

    text = re.sub(r"(\d+\s*:\s*)[0-9.]+", r"\g<1>0.0", BR_TRIPS.read_text())
    text = re.sub(r"<TOTAL OD FLOW>\s*[0-9.]+", "<TOTAL OD FLOW> 0.0", text)
    trips = tmp_path / "B_trips.tntp"
    trips.write_text(text)
    with _raises("B_trips.tntp: every demand entry is 0: there is no OD pair to route"):
        pj.read_tntp(BR_NET, trips)


def test_absurd_zone_count_is_named(tmp_path):
    """2·10⁶ zones would need a 32 TB dense OD matrix: a clear error, not a MemoryError."""
    text = BR_TRIPS.read_text().replace("<NUMBER OF ZONES> 2", "<NUMBER OF ZONES> 2000000")
    trips = tmp_path / "B_trips.tntp"
    trips.write_text(text)
    with _raises("<NUMBER OF ZONES> = 2000000: the dense 2000000 x 2000000 OD matrix"):
        read_trips(trips)
