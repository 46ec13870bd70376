"""The `plugins` suite's figures: medians over rounds, added latency, the calibration, tables.

Every batch (bench.plugin_client.Batch) is one tree's namespace and op in one round; "tree" is
"" for the code under test and "baseline" for `--baseline DIR`'s proxy. Added latency is the
median over rounds of (namespace - in-process, same tree, same round), so a slow phase of the
machine cancels out; `added/hop` divides each round's added p50 by that round's synthetic hop
(bench.calibration), so a slow *day* does too.
"""

from __future__ import annotations

from typing import Any

from bench import h2load, report

#: Namespace name → plugin mode, in the order of the tables.
NAMESPACES = {"inproc": "in_process", "sidecar": "sidecar", "remote": "remote"}
LABELS = {"inproc": "in-process", "sidecar": "sidecar (Unix socket)", "remote": "remote (mTLS)"}
BASELINE = "inproc"
OPS = ("set", "get")
#: ARCHITECTURE.md §7: most added p50 latency over in-process, in µs.
TARGET_ADDED_P50_US = {"sidecar": 300.0, "remote": 600.0}
#: What RFC-008 claims for its Rust design (added latency), for the report.
RFC_CLAIMS = {"sidecar": "~1-2 ms", "remote": "~5-10 ms"}
#: The calibration of the day the targets were read on: bench.calibration's `hop_us` on the
#: quietest run recorded in docs/benchmarks.md ("Reading the calibration"). A target on the
#: day's calibration is target x hop_us / REFERENCE_HOP_US.
REFERENCE_HOP_US = 110.0
CALIBRATION_FIELDS = ("python_us", "echo_us", "hop_us", "hop_warm_us", "cold_factor")


def _us(value: float | None) -> str:
    return report.fmt_num(value, 0)


def _signed_us(value: float | None) -> str:
    return "-" if value is None else f"{value:+,.0f}"


def _per_call(rows: list[dict[str, Any]], attr: str) -> float | None:
    if rows[0][attr] is None:
        return None
    return report.median(r[attr] / r["calls"] * 1e6 for r in rows)


def _switches(rows: list[dict[str, Any]], attr: str) -> tuple[float, float] | None:
    if rows[0][attr] is None:
        return None
    return (
        report.median(r[attr][0] / r["calls"] for r in rows),
        report.median(r[attr][1] / r["calls"] for r in rows),
    )


def summarize_latency(
    batches: list[dict[str, Any]],
    rounds: int,
    tree: str = "",
    calibration: list[dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per "namespace/op" of one tree: medians over rounds, and added latency over
    in-process (the median of each round's difference to that round's in-process batch)."""
    by_key = {(b["namespace"], b["op"], b["round"]): b for b in batches if b["tree"] == tree}
    hops = {c["round"]: c["hop_us"] for c in calibration or ()}
    out: dict[str, dict[str, Any]] = {}
    for ns in NAMESPACES:
        for op in OPS:
            rows = [by_key[ns, op, r] for r in range(rounds)]
            base = [by_key[BASELINE, op, r] for r in range(rounds)]
            m: dict[str, Any] = {
                "rounds": rounds,
                "calls_per_round": rows[0]["calls"],
                "p50_us": report.median(r["p50_us"] for r in rows),
                "p50_us_min": min(r["p50_us"] for r in rows),
                "p50_us_max": max(r["p50_us"] for r in rows),
                "p99_us": report.median(r["p99_us"] for r in rows),
                "p99_us_min": min(r["p99_us"] for r in rows),
                "p99_us_max": max(r["p99_us"] for r in rows),
                "mean_us": report.median(r["mean_us"] for r in rows),
                "proxy_cpu_us_per_call": _per_call(rows, "proxy_cpu_s"),
                "plugin_cpu_us_per_call": _per_call(rows, "plugin_cpu_s"),
                "client_cpu_us_per_call": _per_call(rows, "client_cpu_s"),
                "proxy_wait_us_per_call": _per_call(rows, "proxy_wait_s"),
                "plugin_wait_us_per_call": _per_call(rows, "plugin_wait_s"),
                "client_wait_us_per_call": _per_call(rows, "client_wait_s"),
                "proxy_switches_per_call": _switches(rows, "proxy_switches"),
                "plugin_switches_per_call": _switches(rows, "plugin_switches"),
                "client_switches_per_call": _switches(rows, "client_switches"),
                "other_cpu_share": report.median(r["other_cpu_s"] / r["wall_s"] for r in rows),
            }
            if ns != BASELINE:
                added = [r["p50_us"] - b["p50_us"] for r, b in zip(rows, base, strict=True)]
                m["added_p50_us"] = report.median(added)
                m["added_p50_us_min"] = min(added)
                m["added_p50_us_max"] = max(added)
                m["added_p99_us"] = report.median(
                    r["p99_us"] - b["p99_us"] for r, b in zip(rows, base, strict=True)
                )
                target = TARGET_ADDED_P50_US[ns]
                m["target_added_p50_us"] = target
                m["pass"] = m["added_p50_us"] <= target
                if len(hops) >= rounds:
                    m["added_per_hop"] = report.median(a / hops[r] for r, a in enumerate(added))
                    m["target_per_hop"] = target / REFERENCE_HOP_US
                    m["pass_calibrated"] = m["added_per_hop"] <= m["target_per_hop"]
            out[f"{ns}/{op}"] = m
    return out


def _verdict(m: dict[str, Any]) -> str:
    text = f"≤ {m['target_added_p50_us']:,.0f} µs: {'PASS' if m['pass'] else '**FAIL**'}"
    if "pass_calibrated" in m:
        text += (
            f"; ≤ {m['target_per_hop']:.2f} hop: {'PASS' if m['pass_calibrated'] else '**FAIL**'}"
        )
    return text


def latency_table(medians: dict[str, dict[str, Any]], value_size: int, title: str = "") -> str:
    header = [
        "namespace",
        "op",
        "p50 µs (min..max)",
        "p99 µs (min..max)",
        "added p50 µs (min..max)",
        "added p99 µs",
        "added p50 / hop",
        "proxy CPU µs/call",
        "plugin CPU µs/call",
        "client CPU µs/call",
        "other CPU",
        "target: added p50",
    ]
    rows = []
    for name, m in medians.items():
        ns, op = name.split("/")
        base = ns == BASELINE
        rows.append(
            [
                LABELS[ns],
                op,
                f"{_us(m['p50_us'])} ({_us(m['p50_us_min'])}..{_us(m['p50_us_max'])})",
                f"{_us(m['p99_us'])} ({_us(m['p99_us_min'])}..{_us(m['p99_us_max'])})",
                "-"
                if base
                else f"{_signed_us(m['added_p50_us'])} "
                f"({_signed_us(m['added_p50_us_min'])}..{_signed_us(m['added_p50_us_max'])})",
                "-" if base else _signed_us(m["added_p99_us"]),
                f"{m['added_per_hop']:.2f}" if "added_per_hop" in m else "-",
                _us(m["proxy_cpu_us_per_call"]),
                _us(m["plugin_cpu_us_per_call"]) if m["plugin_cpu_us_per_call"] else "(in proxy)",
                _us(m["client_cpu_us_per_call"]),
                f"{m['other_cpu_share'] * 100:.0f}%",
                "-" if base else _verdict(m),
            ]
        )
    first = next(iter(medians.values()))
    return (
        f"### latency{title}: sequential Execute, memstore {'/'.join(OPS)}, {value_size}-byte "
        f"values, {first['calls_per_round']} calls per namespace and op per round\n\n"
        + report.markdown_table(header, rows)
    )


def _pair(value: tuple[float, float] | None) -> str:
    return "-" if value is None else f"{value[0]:.2f} / {value[1]:.2f}"


def time_table(medians: dict[str, dict[str, Any]], title: str = "") -> str:
    """Where a call's time goes: CPU and run-queue wait per process, context switches."""
    header = [
        "namespace",
        "op",
        "p50 µs",
        "CPU µs/call: client + proxy + plugin = sum",
        "run-queue wait µs/call: client, proxy, plugin",
        "switches/call blocked / preempted: proxy",
        "plugin",
        "client",
    ]
    rows = []
    for name, m in medians.items():
        ns, op = name.split("/")
        cpu = [m["client_cpu_us_per_call"], m["proxy_cpu_us_per_call"]]
        plugin = m["plugin_cpu_us_per_call"]
        total = sum(cpu) + (plugin or 0.0)
        waits = [m["client_wait_us_per_call"], m["proxy_wait_us_per_call"]]
        rows.append(
            [
                LABELS[ns],
                op,
                _us(m["p50_us"]),
                f"{_us(cpu[0])} + {_us(cpu[1])} + {_us(plugin) if plugin else '-'} = {_us(total)}",
                ", ".join(_us(w) for w in waits)
                + f", {_us(m['plugin_wait_us_per_call']) if plugin else '-'}",
                _pair(m["proxy_switches_per_call"]),
                _pair(m["plugin_switches_per_call"]),
                _pair(m["client_switches_per_call"]),
            ]
        )
    return (
        f"### where the time goes{title} (medians over rounds; /proc/<pid>/task/*/schedstat and "
        "status)\n\n" + report.markdown_table(header, rows)
    )


def calibration_table(
    per_round: list[dict[str, Any]], runner: dict[str, dict[str, Any]] | None = None
) -> str:
    """The same-run calibration: per-round quick ones (median, min..max), and the runner's
    full ones before and after the run (with prism's sans-IO cost, per tree)."""
    header = ["calibration", *CALIBRATION_FIELDS, "wire_us", "loadavg"]
    rows = []
    if per_round:
        cells = ["each round (median, min..max)"]
        for key in CALIBRATION_FIELDS:
            values = [c[key] for c in per_round if c.get(key) is not None]
            digits = 2 if key == "cold_factor" else 0
            cells.append(
                f"{report.fmt_num(report.median(values), digits)} "
                f"({report.fmt_num(min(values), digits)}..{report.fmt_num(max(values), digits)})"
                if values
                else "-"
            )
        cells += ["-", f"{report.median(c['loadavg'] for c in per_round):.1f}"]
        rows.append(cells)
    for label, c in (runner or {}).items():
        rows.append(
            [
                label,
                *(
                    report.fmt_num(c.get(key), 2 if key == "cold_factor" else 0)
                    for key in CALIBRATION_FIELDS
                ),
                report.fmt_num(c.get("wire_us"), 1),
                f"{c['loadavg']:.1f}",
            ]
        )
    return (
        "### calibration (bench.calibration, µs; docs/benchmarks.md: reading the calibration)\n\n"
        + report.markdown_table(header, rows)
        + f"\n\nReference hop (the day the targets are read on): {REFERENCE_HOP_US:g} µs."
    )


def comparison_table(this: dict[str, dict[str, Any]], base: dict[str, dict[str, Any]]) -> str:
    """Before/after in one run: the baseline tree's added p50 beside this tree's."""
    header = ["namespace", "op", "added p50 µs: baseline", "this tree", "change", "ratio"]
    header += ["proxy + plugin CPU µs/call: baseline", "this tree"]
    rows = []
    for name, m in this.items():
        ns, op = name.split("/")
        if ns == BASELINE:
            continue
        b = base[name]

        def cpu(x: dict[str, Any]) -> float:
            return float(x["proxy_cpu_us_per_call"] + (x["plugin_cpu_us_per_call"] or 0.0))

        rows.append(
            [
                LABELS[ns],
                op,
                _signed_us(b["added_p50_us"]),
                _signed_us(m["added_p50_us"]),
                _signed_us(m["added_p50_us"] - b["added_p50_us"]),
                report.fmt_ratio(report.ratio(m["added_p50_us"], b["added_p50_us"])),
                _us(cpu(b)),
                _us(cpu(m)),
            ]
        )
    return "### before/after in one run: added p50 over in-process\n\n" + report.markdown_table(
        header, rows
    )


def verdicts(medians: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for ns, target in TARGET_ADDED_P50_US.items():
        ms = {op: medians[f"{ns}/{op}"] for op in OPS}
        ok = all(m["pass"] for m in ms.values())
        added = ", ".join(f"{op} {_signed_us(m['added_p50_us'])} µs" for op, m in ms.items())
        line = (
            f"- {ns}: added p50 {added}; target ≤ {target:,.0f} µs: {'PASS' if ok else '**FAIL**'}"
        )
        if all("pass_calibrated" in m for m in ms.values()):
            per_hop = ", ".join(f"{op} {m['added_per_hop']:.2f}" for op, m in ms.items())
            ok_cal = all(m["pass_calibrated"] for m in ms.values())
            line += (
                f"; on the day's calibration: {per_hop} hop, target ≤ "
                f"{target / REFERENCE_HOP_US:.2f}: {'PASS' if ok_cal else '**FAIL**'}"
            )
        lines.append(line + f" (RFC-008 claims {RFC_CLAIMS[ns]} for its Rust design)")
    return lines


def summarize_throughput(runs: list[Any], tree: str = "") -> dict[str, dict[str, Any]]:
    out = {}
    for ns in NAMESPACES:
        rs = [r for r in runs if r.namespace == ns and r.tree == tree]
        rates = [r.req_per_s for r in rs]
        out[ns] = {
            "runs": len(rs),
            "req_per_s": report.median(rates),
            "req_per_s_min": min(rates),
            "req_per_s_max": max(rates),
            "proxy_cpu_us_per_req": report.median(r.proxy_cpu_s / r.succeeded * 1e6 for r in rs),
            "plugin_cpu_us_per_req": None
            if rs[0].plugin_cpu_s is None
            else report.median((r.plugin_cpu_s or 0.0) / r.succeeded * 1e6 for r in rs),
            "client_cpu_share": report.median(r.client_cpu_s / r.finished_s for r in rs),
            "other_cpu_share": report.median(r.other_cpu_s / r.finished_s for r in rs),
        }
    return out


def throughput_table(medians: dict[str, dict[str, Any]], load: h2load.Load, title: str = "") -> str:
    header = [
        "namespace",
        "req/s (min..max)",
        "vs inproc",
        "proxy CPU µs/req",
        "plugin CPU µs/req",
        "h2load CPU",
        "other CPU",
    ]
    base = medians[BASELINE]["req_per_s"]
    rows = [
        [
            LABELS[ns],
            f"{report.fmt_num(m['req_per_s'])} ({report.fmt_num(m['req_per_s_min'])}"
            f"..{report.fmt_num(m['req_per_s_max'])})",
            report.fmt_ratio(report.ratio(m["req_per_s"], base)),
            _us(m["proxy_cpu_us_per_req"]),
            _us(m["plugin_cpu_us_per_req"]) if m["plugin_cpu_us_per_req"] else "(in proxy)",
            f"{m['client_cpu_share'] * 100:.0f}%",
            f"{m['other_cpu_share'] * 100:.0f}%",
        ]
        for ns, m in medians.items()
    ]
    return (
        f"### throughput{title}: Execute get, h2load {load.clients} connection x {load.streams} "
        f"concurrent streams, {load.duration_s:g} s per namespace\n\n"
        + report.markdown_table(header, rows)
    )
