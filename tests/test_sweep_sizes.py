"""The sweep prints each table size as it was asked for; the CSV keeps the real size beside it."""

import pandas as pd

import cli.main as cli


def test_the_sweep_table_prints_the_sizes_asked_for(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["sweep", "tiny", "--table-gib", "0.01,1,128", "--placements", "hbm,host_dma", "--phases",
                     "decode", "--steps", "3", "--jobs", "1", "--quiet", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    rows = [line.split() for line in lines[1:7]]
    col = header.index("table_gib")
    assert [r[col] for r in rows] == ["0.01", "1", "128"] * 2
    df = pd.read_csv(out / "sweep.csv")
    assert list(df["table_gib_asked"]) == [0.01, 1, 128] * 2
    assert (df["table_gib"] >= df["table_gib_asked"]).all()          # prime row counts: a little larger
    assert (df["table_gib"] < df["table_gib_asked"] * 1.01).all()
