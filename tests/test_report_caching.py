"""The report's "Exact vs approximate caching" section (harness/report/caching.py): which points
count as exact or approximate caches, the speed-up against each point's uncached twin, the
cache-error columns, the plot, and no section for a sweep that measured no cache error."""

from __future__ import annotations

from harness import report as rp
from harness.report.caching import APPROXIMATE, EXACT, NONE, cache_kind, caching_points
from tests.test_report import row, write_results

ERROR = {"cache_error_max_logit": None, "cache_error_kl": None, "cache_error_flip": None, "cache_error_draws": 0,
         "cache_error_method": "in-sampler (cached step re-run uncached, same state)"}


def decoder_row(entry, family, fields, label, gen_ppl, seconds, nfe, tokens, *, key_reads=0.0, error=None):
    r = row(entry, family, label, gen_ppl, seconds, nfe)
    r["schedule_fields"] = {**fields, "measure_cache_error": True}
    r["metrics"].update(tokens_computed_per_sample=tokens, key_reads_per_sample=key_reads, **(error or ERROR))
    return r


def caching_rows():
    probe = lambda m, kl, flip: {**ERROR, "cache_error_max_logit": m, "cache_error_kl": kl,  # noqa: E731
                                 "cache_error_flip": flip, "cache_error_draws": 40}
    twin = {**ERROR, "cache_error_max_logit": 0.0, "cache_error_kl": 0.0, "cache_error_flip": 0.0,
            "cache_error_draws": 64, "cache_error_method": "twin run"}
    block = {"block_length": 16, "threshold": 0.9}
    return [
        decoder_row("ar", "ar", {}, "cerr=True", 100.0, 0.010, 63, 64.0, key_reads=2000.0, error=twin),
        decoder_row("mdlm", "mdlm", block, "B=16,tau=0.9,cerr=True", 500.0, 0.040, 40, 40 * 64.0),
        decoder_row("mdlm", "mdlm", {**block, "cache": "prefix"}, "B=16,cache=prefix,tau=0.9,cerr=True", 520.0, 0.020,
                    40, 1600.0, key_reads=2560.0, error=probe(2.5, 0.04, 0.1)),
        decoder_row("mdlm", "mdlm", {**block, "cache": "dual"}, "B=16,cache=dual,tau=0.9,cerr=True", 560.0, 0.010,
                    40, 800.0, key_reads=2560.0, error=probe(4.0, 0.09, 0.2)),
        decoder_row("mdlm", "mdlm", {**block, "cache": "dual", "refresh": 1}, "B=16,cache=dual,refresh=1,tau=0.9,cerr=True",
                    500.0, 0.045, 40, 40 * 64.0, key_reads=2560.0),
    ]


def test_cache_kinds():
    assert cache_kind({"cache": "dual"}, 10.0) == APPROXIMATE
    assert cache_kind({"cache": "prefix", "refresh": 1}, 10.0) == EXACT  # rebuilt at every step: nothing stale
    assert cache_kind({}, 10.0) == EXACT and cache_kind({"steps": 8}, 0.0) == NONE and cache_kind(None, None) == NONE


def test_caching_section_speedups_errors_and_plot(tmp_path):
    results = write_results(tmp_path, caching_rows())
    frame = rp.load_frame(results)
    agg = caching_points(frame).set_index("schedule")
    # against the same entry and schedule without the cache fields: 0.040 s and 2560 tokens
    assert abs(agg.loc["B=16,cache=prefix,tau=0.9,cerr=True", "speedup"] - 2.0) < 1e-12
    assert abs(agg.loc["B=16,cache=dual,tau=0.9,cerr=True", "speedup"] - 4.0) < 1e-12
    assert abs(agg.loc["B=16,cache=dual,tau=0.9,cerr=True", "work_ratio"] - 3.2) < 1e-12
    assert agg["speedup"].isna()["cerr=True"] and agg["speedup"].isna()["B=16,tau=0.9,cerr=True"]
    assert list(agg["kind"]) == [EXACT, NONE, APPROXIMATE, APPROXIMATE, EXACT]

    md = (rp.write_report(results)).read_text()
    section = md.split("## Exact vs approximate caching", 1)[1].split("\n## ", 1)[0]
    assert "![gen PPL vs time and NFE, by cache kind](caching.png)" in section
    assert (tmp_path / "reports" / "demo" / "caching.png").stat().st_size > 10_000
    lines = {line.split("|")[3].strip(): line for line in section.splitlines() if line.startswith("| ") and "x" in line}
    dual = next(v for k, v in lines.items() if k == "B=16 cache=dual tau=0.9 cerr=True")
    assert "| approximate cache |" in dual and "| 4.00x | 3.20x | 4.000 | 0.0900 | 0.200 | 40 |" in dual
    ar = next(v for k, v in lines.items() if k == "cerr=True")
    assert "| exact KV cache |" in ar and "| – | – | 0.000 | 0.0000 | 0.000 | 64 |" in ar


def test_no_caching_section_without_cache_error(tmp_path):
    results = write_results(tmp_path, [row("ar", "ar", "default", 100.0, 0.01, 63),
                                       row("mdlm", "mdlm", "T=8", 900.0, 0.005, 8, steps=8)])
    md = rp.write_report(results).read_text()
    assert "Exact vs approximate caching" not in md
    assert not (tmp_path / "reports" / "demo" / "caching.png").exists()
