"""What the load bench writes and prints once the processes are stopped: load.csv,
coldstart.csv, rate.csv, three plots, the table next to the in-process reference, the issue's
targets as PASS/FAIL, and load_summary.json."""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.kit.measure import fmt, ratio
from bench.load.loadgen import RateResult

TARGET_C64_RATIO = 0.8  # c=64 texts/s >= 0.8x in-process batched texts/s
TARGET_C1_EXTRA_MS = 3.0  # c=1 p50 <= in-process single-call p50 + 3 ms
TARGET_COLDSTART_S = 3.0  # launch -> healthy

LOAD_FIELDS = [
    "level",
    "concurrency",
    "texts_per_request",
    "requests",
    "ok",
    "errors",
    "seconds",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "mean_ms",
    "max_ms",
    "req_per_s",
    "texts_per_s",
    "rss_mb",
    "rss_peak_mb",
    "background_cpu",
    "ref_single_p50_ms",
    "p50_vs_ref",
    "p50_minus_ref_ms",
    "ref_engine_single_p50_ms",
    "p50_minus_engine_ms",
    "ref_texts_per_s",
    "throughput_vs_ref",
    "ref_rss_mb",
    "rss_vs_ref",
]
COLD_FIELDS = ["kind", "run", "launch_to_ready_s", "import_s", "load_s", "first_encode_s"]
NAN = float("nan")


@dataclass
class Results:
    """Everything one run measured. Times in seconds unless named _ms, memory in MiB."""

    levels: list[dict[str, Any]]  # one row per level: LOAD_FIELDS (ratios to the reference)
    ref: dict[str, Any]  # the in-process reference's latest figures; empty without it
    ref_cold: list[dict[str, Any]]  # per reference launch: its READY figures, launch_to_ready_s
    daemon_cold: list[float]  # per daemon launch: launch -> /health 200
    daemon_idle_rss: float = NAN  # before the first level
    daemon_final_rss: float = NAN
    daemon_peak_rss: float = NAN
    best_rate: float = NAN  # req/s; nan when the rate search was skipped
    rate_probes: list[RateResult] = field(default_factory=list)

    @property
    def daemon_cold_median(self) -> float:
        return statistics.median(self.daemon_cold)


def report(
    out: Path,
    res: Results,
    *,
    model: str,
    route: str,
    quick: bool,
    p95_target: float,
    rate_searched: bool,
) -> list[dict[str, Any]]:
    """Write every file, print the comparison; returns the targets (each with "pass")."""
    write_csvs(out, res)
    pngs = plots(out, res.levels, res.ref, res.daemon_idle_rss)
    print_table(res.levels)
    print_references(res, p95_target=p95_target, rate_searched=rate_searched)
    targets = check_targets(res)
    print("\n  targets (issue 3):")
    for tg in targets:
        verdict = "n/a " if tg["pass"] is None else ("PASS" if tg["pass"] else "FAIL")
        print(f"    {verdict}  {tg['target']}: {tg['value']}")
    summary = summarise(res, targets, model=model, route=route, quick=quick, p95_target=p95_target)
    (out / "load_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(
        f"\n  wrote {out / 'load.csv'}, coldstart.csv, "
        f"{'rate.csv, ' if res.rate_probes else ''}load_summary.json, "
        + ", ".join(p.name for p in pngs)
    )
    return targets


# --- files -----------------------------------------------------------------------------------


def write_csv(path: Path, fields: list[str], rows: list[dict[str, Any]]) -> None:
    """Rows as CSV with floats rounded to 3 places; keys not in `fields` are left out."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})


def write_csvs(out: Path, res: Results) -> None:
    """load.csv, coldstart.csv, and rate.csv when the rate search ran."""
    write_csv(out / "load.csv", LOAD_FIELDS, res.levels)
    write_csv(out / "coldstart.csv", COLD_FIELDS, cold_rows(res))
    if res.rate_probes:
        write_csv(
            out / "rate.csv",
            list(asdict(res.rate_probes[0])),
            [asdict(r) for r in sorted(res.rate_probes, key=lambda r: r.rate)],
        )


def cold_rows(res: Results) -> list[dict[str, Any]]:
    """One row per launch of each kind, then each kind's median."""
    rows: list[dict[str, Any]] = [
        {"kind": "daemon", "run": i + 1, "launch_to_ready_s": s}
        for i, s in enumerate(res.daemon_cold)
    ]
    rows += [
        {
            "kind": "in-process",
            "run": i + 1,
            "launch_to_ready_s": r["launch_to_ready_s"],
            "import_s": r["import_s"],
            "load_s": r["load_s"],
            "first_encode_s": r["first_encode_s"],
        }
        for i, r in enumerate(res.ref_cold)
    ]
    rows.append({"kind": "daemon", "run": "median", "launch_to_ready_s": res.daemon_cold_median})
    if res.ref_cold:
        rows.append(
            {"kind": "in-process", "run": "median", "launch_to_ready_s": res.ref["cold_start_s"]}
        )
    return rows


def summarise(
    res: Results,
    targets: list[dict[str, Any]],
    *,
    model: str,
    route: str,
    quick: bool,
    p95_target: float,
) -> dict[str, Any]:
    """load_summary.json: the run's settings, every figure, and the targets."""
    return {
        "model": model,
        "route": route,
        "quick": quick,
        "reference": res.ref,
        "daemon_idle_rss_mb": res.daemon_idle_rss,
        "daemon_final_rss_mb": res.daemon_final_rss,
        "daemon_peak_rss_mb": res.daemon_peak_rss,
        "levels": res.levels,
        "cold_start": {
            "daemon_runs_s": res.daemon_cold,
            "daemon_median_s": res.daemon_cold_median,
            "in_process_runs_s": [r["launch_to_ready_s"] for r in res.ref_cold],
            "in_process_median_s": res.ref.get("cold_start_s", NAN),
        },
        "rate": {
            "best_rps": res.best_rate,
            "p95_target_ms": p95_target,
            "probes": [asdict(r) for r in res.rate_probes],
        },
        "targets": targets,
    }


# --- printed ---------------------------------------------------------------------------------


def print_table(levels: list[dict[str, Any]]) -> None:
    """One line per level: the daemon's figures, the reference's, and their ratios."""
    print(
        "\n=== load bench: daemon vs in-process sentence-transformers (same model, same "
        "texts, same run) ==="
    )
    print(
        f"{'level':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'req/s':>7} "
        f"{'texts/s':>8} | {'ref p50':>7} {'p50/ref':>7} {'ref t/s':>7} {'tput/ref':>8} | "
        f"{'RSS MiB':>7} {'peak':>5} {'RSS/ref':>7}"
    )
    for r in levels:
        print(
            f"{r['level']:>7} {fmt(r['p50_ms']):>8} {fmt(r['p95_ms']):>8} "
            f"{fmt(r['p99_ms']):>8} {fmt(r['req_per_s']):>7} {fmt(r['texts_per_s']):>8} | "
            f"{fmt(r['ref_single_p50_ms'], 2):>7} {fmt(r['p50_vs_ref'], 2):>6}x "
            f"{fmt(r['ref_texts_per_s']):>7} {fmt(r['throughput_vs_ref'], 2):>7}x | "
            f"{fmt(r['rss_mb'], 0):>7} {fmt(r['rss_peak_mb'], 0):>5} "
            f"{fmt(r['rss_vs_ref'], 2):>6}x"
        )
    print(
        "  ref p50 = in-process encode([text]) p50 (ms); ref t/s = in-process "
        "encode(texts, batch_size=64) texts/s; both re-measured right before the level"
    )


def print_references(res: Results, *, p95_target: float, rate_searched: bool) -> None:
    """The latest reference figures, the cold starts and the best rate, each as a ratio."""
    ref = res.ref
    ref_p50 = ref.get("single_p50_ms", NAN)
    ref_tps = ref.get("batched_texts_per_s", NAN)
    ref_cold_s = ref.get("cold_start_s", NAN)
    daemon_cold_med = res.daemon_cold_median
    print(
        f"  latest references: encode([text]) p50 {fmt(ref_p50, 2)} ms; encode(batch_size=64) "
        f"{fmt(ref_tps)} texts/s; batches of 32 {fmt(ref.get('batch32_texts_per_s', 0.0))} "
        f"texts/s; in-process RSS {fmt(ref.get('rss_mb', NAN), 0)} MiB; "
        f"daemon idle RSS {fmt(res.daemon_idle_rss, 0)} MiB"
    )
    print(
        f"  cold start (median of {len(res.daemon_cold)}): daemon {daemon_cold_med:.2f}s vs "
        f"in-process import+load+first encode {fmt(ref_cold_s, 2)}s -> "
        f"{fmt(ratio(daemon_cold_med, ref_cold_s), 2)}x"
    )
    if rate_searched:
        best = res.best_rate
        print(
            f"  best open-loop rate with p95 <= {p95_target:.0f} ms: {best:.1f} req/s "
            f"= {fmt(ratio(best, ref_tps), 2)}x in-process batched texts/s, "
            f"{fmt(ratio(best, 1000 / ref_p50), 2)}x in-process one-text-per-call rate"
        )


def check_targets(res: Results) -> list[dict[str, Any]]:
    """The issue's targets that this run's levels can answer; "pass" is None without a
    reference to compare with."""
    by = {r["level"]: r for r in res.levels}
    targets: list[dict[str, Any]] = []
    if "c64" in by:
        v, base = by["c64"]["texts_per_s"], by["c64"]["ref_texts_per_s"]
        targets.append(
            {
                "target": f"c=64 throughput >= {TARGET_C64_RATIO}x in-process batched",
                "value": f"{v:.1f} texts/s vs {fmt(base)} = {fmt(ratio(v, base), 2)}x",
                "pass": ratio(v, base) >= TARGET_C64_RATIO if base == base else None,
            }
        )
    if "c1" in by:
        v, base = by["c1"]["p50_ms"], by["c1"]["ref_single_p50_ms"]
        targets.append(
            {
                "target": f"c=1 p50 <= in-process single p50 + {TARGET_C1_EXTRA_MS:g} ms",
                "value": f"{v:.2f} ms vs {fmt(base, 2)} ms ({v - base:+.2f} ms); "
                f"localrank engine in-process "
                f"{fmt(by['c1']['ref_engine_single_p50_ms'], 2)} ms, so "
                f"serving overhead {by['c1']['p50_minus_engine_ms']:+.2f} ms",
                "pass": v <= base + TARGET_C1_EXTRA_MS if base == base else None,
            }
        )
    cold = res.daemon_cold_median
    targets.append(
        {
            "target": f"cold start to healthy <= {TARGET_COLDSTART_S:g} s",
            "value": f"{cold:.2f} s (median of {len(res.daemon_cold)}; "
            f"in-process {fmt(res.ref.get('cold_start_s', NAN), 2)} s)",
            "pass": cold <= TARGET_COLDSTART_S,
        }
    )
    return targets


# --- plots -----------------------------------------------------------------------------------


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only backend. Imported on first use, not at the top:
    the reference worker is the load bench again, and its launch-to-ready time must not pay
    for matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def plots(
    out: Path, levels: list[dict[str, Any]], ref: dict[str, Any], idle_rss: float
) -> list[Path]:
    """latency.png, throughput.png and rss.png in `out`."""
    return [
        latency_plot(out / "latency.png", levels, ref),
        throughput_plot(out / "throughput.png", levels, ref),
        rss_plot(out / "rss.png", levels, ref, idle_rss),
    ]


def latency_plot(path: Path, levels: list[dict[str, Any]], ref: dict[str, Any]) -> Path:
    """p50/p95/p99 vs concurrency (one text per request), the in-process single call as a line."""
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    single = [r for r in levels if r["texts_per_request"] == 1]
    if single:
        xs = [r["concurrency"] for r in single]
        for key, style in (("p50_ms", "o-"), ("p95_ms", "s--"), ("p99_ms", "^:")):
            ax.plot(xs, [r[key] for r in single], style, label=f"daemon {key[:-3]}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
    if ref.get("single_p50_ms"):
        ax.axhline(
            ref["single_p50_ms"],
            color="grey",
            ls="-.",
            label=f"in-process encode([text]) p50 {ref['single_p50_ms']:.1f} ms",
        )
    ax.set_xlabel("concurrency (one text per request)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title("localrank daemon latency vs concurrency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def throughput_plot(path: Path, levels: list[dict[str, Any]], ref: dict[str, Any]) -> Path:
    """texts/s per level against the in-process references and the c=64 target."""
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    names = [r["level"] for r in levels]
    ax.bar(names, [r["texts_per_s"] for r in levels], color="tab:blue", label="daemon texts/s")
    if ref.get("batched_texts_per_s"):
        ax.axhline(
            ref["batched_texts_per_s"],
            color="tab:red",
            ls="--",
            label=f"in-process encode(batch_size=64) {ref['batched_texts_per_s']:.0f} texts/s",
        )
        ax.axhline(
            TARGET_C64_RATIO * ref["batched_texts_per_s"],
            color="tab:red",
            ls=":",
            label=f"target at c=64: {TARGET_C64_RATIO}x",
        )
    if ref.get("single_p50_ms"):
        ax.axhline(
            1000 / ref["single_p50_ms"], color="grey", ls="-.", label="in-process one text per call"
        )
    ax.set_ylabel("texts / s")
    ax.set_title("throughput: daemon vs in-process sentence-transformers")
    ax.legend(fontsize=8)
    return save(fig, path)


def rss_plot(
    path: Path, levels: list[dict[str, Any]], ref: dict[str, Any], idle_rss: float
) -> Path:
    """The daemon's RSS at the end of and peak during each level, idle first."""
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    rows = [{"level": "idle", "rss_mb": idle_rss, "rss_peak_mb": idle_rss}] + levels
    x = list(range(len(rows)))
    ax.bar([i - 0.2 for i in x], [r["rss_mb"] for r in rows], width=0.4, label="RSS end of level")
    ax.bar(
        [i + 0.2 for i in x],
        [r["rss_peak_mb"] for r in rows],
        width=0.4,
        label="peak RSS during level",
    )
    ax.set_xticks(x, [r["level"] for r in rows])
    if ref.get("rss_mb"):
        ax.axhline(
            ref["rss_mb"],
            color="tab:red",
            ls="--",
            label=f"in-process ST after batched encode {ref['rss_mb']:.0f} MiB",
        )
    ax.set_ylabel("MiB")
    ax.set_title("daemon RSS per level")
    ax.legend(fontsize=8)
    return save(fig, path)
