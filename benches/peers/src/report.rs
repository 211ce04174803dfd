//! Ratios against ours, the issue-5 targets, and the results files: results.json,
//! results.md and chart.svg (hand-written SVG, no plotting dependency).

use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;

use crate::harness::{fmt_value, Better, Results, Row};

/// The ours row a peer row is compared with, if any.
fn ours_row_for(results: &Results, row: &Row) -> Option<String> {
    let name = row.name.as_str();
    if name.contains("ours") {
        return None;
    }
    let suffix = |s: &str| -> String {
        for p in [" p50", " p99.9", " p99"] {
            if s.ends_with(p) {
                return p.to_string();
            }
        }
        String::new()
    };
    let candidate = if let Some(rest) = name.strip_prefix("memory: ") {
        let at = rest.rsplit_once(" @ ").map(|(_, n)| n.to_string())?;
        format!("memory: ours registered agent @ {at}")
    } else if name.starts_with("spsc cast:") {
        "spsc cast: ours agent, MailboxSender::try_send".into()
    } else if name.starts_with("2p cast:") {
        "2p cast: ours agent, MailboxSender::try_send".into()
    } else if name.starts_with("spsc:") {
        "spsc: ours mailbox, AgentMessage".into()
    } else if name.starts_with("2p:") {
        "2p: ours mailbox, AgentMessage".into()
    } else if name.starts_with("call sync:") {
        format!("call sync: ours MessageSystem::call{}", suffix(name))
    } else if name.starts_with("call async:") || name.starts_with("call:") {
        format!(
            "call async: ours tokio::MessageSystem::call (current-thread){}",
            suffix(name)
        )
    } else if name.starts_with("send_message:") {
        "send_message: ours MessageSystem::send_message".into()
    } else if name == "timers: tokio-util DelayQueue insert" {
        "timers: ours TimerWheel insert".into()
    } else if name == "timers: tokio-util DelayQueue remove" {
        "timers: ours TimerWheel cancel".into()
    } else {
        return None;
    };
    results.get(&candidate).map(|_| candidate)
}

/// "How many times better ours is than this row": ours/peer for throughput, peer/ours
/// for costs. `None` for ours' own rows and rows without a counterpart.
pub fn advantage(results: &Results, row: &Row) -> Option<(String, f64)> {
    let ours_name = ours_row_for(results, row)?;
    let ours = results.get(&ours_name)?;
    let r = match row.better {
        Better::Higher => ours / row.value,
        Better::Lower => {
            if ours == 0.0 {
                return None;
            }
            row.value / ours
        }
    };
    Some((ours_name, r))
}

/// The issue-5 targets from the rows present.
pub fn targets(results: &mut Results) {
    println!("\n== targets (issue 5) ==");
    let g = |r: &Results, n: &str| r.get(n);
    let pairs: [(&str, &str, &str); 2] = [
        (
            "mailbox SPSC, AgentMessage: ours ÷ crossbeam",
            "spsc: ours mailbox, AgentMessage",
            "spsc: crossbeam, AgentMessage",
        ),
        (
            "mailbox 2 producers, AgentMessage: ours ÷ crossbeam",
            "2p: ours mailbox, AgentMessage",
            "2p: crossbeam, AgentMessage",
        ),
    ];
    for (name, o, p) in pairs {
        if let (Some(o), Some(p)) = (g(results, o), g(results, p)) {
            results.ratio_target(name, o / p, 1.0, false);
        }
    }
    let reference = "send_message: 1.x reference route_message + receive";
    if let Some(r) = g(results, reference) {
        if let Some(o) = g(results, "send_message: ours MessageSystem::send_message") {
            results.ratio_target(
                "routed send_message + receive: ours ÷ 1.x",
                o / r,
                20.0,
                false,
            );
        }
        if let Some(o) = g(results, "send_message: ours pre-resolved MailboxSender") {
            results.ratio_target(
                "pre-resolved MailboxSender + receive: ours ÷ 1.x",
                o / r,
                50.0,
                false,
            );
        }
    }
    for label in ["spsc", "2p"] {
        let ours = g(
            results,
            &format!("{label} cast: ours agent, MailboxSender::try_send"),
        );
        for peer in ["actix do_send", "ractor cast", "kameo tell"] {
            if let (Some(o), Some(p)) = (ours, g(results, &format!("{label} cast: {peer}"))) {
                results.ratio_target(
                    format!("cast into an agent, {label}: ours ÷ {peer}"),
                    o / p,
                    5.0,
                    false,
                );
            }
        }
    }
    if let (Some(o), Some(p)) = (
        g(results, "call sync: ours MessageSystem::call p50"),
        g(results, "call sync: crossbeam ping-pong (2 threads) p50"),
    ) {
        results.ratio_target(
            "call p50 sync: ours ÷ crossbeam ping-pong",
            o / p,
            1.2,
            true,
        );
    }
    if let (Some(o), Some(p)) = (
        g(
            results,
            "call async: ours tokio::MessageSystem::call (current-thread) p50",
        ),
        g(
            results,
            "call async: tokio mpsc + oneshot (current-thread) p50",
        ),
    ) {
        results.ratio_target(
            "call p50 async: ours ÷ tokio mpsc + oneshot",
            o / p,
            1.2,
            true,
        );
    }
    for n in ["100,000", "1.00 M"] {
        if let Some(v) = g(results, &format!("memory: ours registered agent @ {n}")) {
            results.abs_target(
                format!("bytes per idle registered agent @ {n}"),
                v,
                256.0,
                "B",
            );
        }
    }
    if let Some(v) = g(results, "retained per delivered message: ours") {
        results.abs_target("bytes retained per delivered message", v, 1.0, "B");
    }
    if let Some(v) = g(results, "register: ours registered agent @ 1.00 M") {
        results.abs_target("register 1,000,000 agents", v, 1.0, "s");
    }
    for (name, o, p) in [
        (
            "timer insert @ 1M pending: DelayQueue ÷ ours",
            "timers: ours TimerWheel insert",
            "timers: tokio-util DelayQueue insert",
        ),
        (
            "timer cancel @ 1M pending: DelayQueue ÷ ours",
            "timers: ours TimerWheel cancel",
            "timers: tokio-util DelayQueue remove",
        ),
    ] {
        if let (Some(o), Some(p)) = (g(results, o), g(results, p)) {
            results.ratio_target(name, p / o, 3.0, false);
        }
    }
}

pub struct Machine {
    pub nproc: usize,
    pub cpu: String,
    pub heavy: bool,
    pub date: String,
}

impl Machine {
    pub fn detect(heavy: bool) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
        let date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Machine {
            nproc,
            cpu,
            heavy,
            date,
        }
    }
}

pub fn write(dir: &Path, results: &Results, machine: &Machine) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let rows: Vec<_> = results
        .rows
        .iter()
        .map(|r| {
            let adv = advantage(results, r);
            json!({
                "section": r.section,
                "name": r.name,
                "value": r.value,
                "unit": r.unit,
                "better": if r.better == Better::Higher { "higher" } else { "lower" },
                "note": r.note,
                "compared_with": adv.as_ref().map(|(n, _)| n.clone()),
                "ours_advantage": adv.map(|(_, x)| x),
            })
        })
        .collect();
    let targets: Vec<_> = results
        .targets
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "value": t.ratio,
                "is_ratio": t.is_ratio,
                "bound": t.bound,
                "bound_value": t.bound_value,
                "met": t.met,
            })
        })
        .collect();
    let doc = json!({
        "machine": { "nproc": machine.nproc, "cpu": machine.cpu, "heavy": machine.heavy, "date": machine.date },
        "rows": rows,
        "targets": targets,
    });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&doc).expect("json") + "\n",
    )?;
    std::fs::write(dir.join("results.md"), markdown(results, machine))?;
    std::fs::write(dir.join("chart.svg"), svg(results, machine))?;
    Ok(())
}

fn markdown(results: &Results, machine: &Machine) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Peer benchmarks\n\nMachine: {} × {} (nproc {}), {} run{}, {}. Generated by `scripts/bench-peers.sh`.\n",
        machine.nproc,
        machine.cpu,
        machine.nproc,
        if machine.heavy { "heavy" } else { "quick" },
        if machine.heavy { " (PEERS_HEAVY=1)" } else { "" },
        machine.date
    );
    let _ = writeln!(md, "\"Ours ×\" is how many times better ours is than that row (throughput: ours ÷ peer; costs: peer ÷ ours), against the ours row of the same group.\n");
    let _ = writeln!(
        md,
        "## Targets\n\n| target | value | bound | met |\n|---|---:|---|---|"
    );
    for t in &results.targets {
        let v = if t.is_ratio {
            format!("{:.2}×", t.ratio)
        } else {
            fmt_value(t.ratio)
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            t.name,
            v,
            t.bound,
            if t.met { "yes" } else { "**no**" }
        );
    }
    let mut section = "";
    for r in &results.rows {
        if r.section != section {
            section = r.section;
            let _ = writeln!(md, "\n## {section}\n\n| case | value | unit | ours × | note |\n|---|---:|---|---:|---|");
        }
        let adv = advantage(results, r)
            .map(|(_, x)| format!("{x:.2}×"))
            .unwrap_or_default();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            r.name,
            fmt_value(r.value),
            r.unit,
            adv,
            r.note
        );
    }
    md
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Horizontal bars: ours' advantage over each peer row (log scale), 1× line, grouped by
/// section; green where ours is ahead, red where behind.
fn svg(results: &Results, machine: &Machine) -> String {
    let bars: Vec<(String, &'static str, f64)> = results
        .rows
        .iter()
        .filter(|r| !r.name.ends_with(" p99") && !r.name.ends_with(" p99.9"))
        .filter_map(|r| advantage(results, r).map(|(_, x)| (r.name.clone(), r.section, x)))
        .collect();
    let (label_w, plot_w, bar_h, top) = (430.0, 420.0, 18.0, 70.0);
    let (lo, hi) = (0.1f64, 1000.0f64);
    let x = |v: f64| {
        label_w + plot_w * ((v.clamp(lo, hi).log10() - lo.log10()) / (hi.log10() - lo.log10()))
    };
    let mut sections = 0usize;
    let mut prev = "";
    for (_, s, _) in &bars {
        if *s != prev {
            sections += 1;
            prev = s;
        }
    }
    let height = top + bar_h * bars.len() as f64 + 22.0 * sections as f64 + 40.0;
    let width = label_w + plot_w + 80.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">terraphim_agent_messaging vs peers: how many times better ours is (log scale)</text>"#
    );
    let _ = writeln!(
        out,
        r##"<text x="10" y="38" fill="#555">{} × {}, {} run, {}. Throughput: ours ÷ peer; latency p50, bytes, ns/op: peer ÷ ours.</text>"##,
        machine.nproc,
        esc(&machine.cpu),
        if machine.heavy { "heavy" } else { "quick" },
        esc(&machine.date)
    );
    for v in [0.1, 1.0, 10.0, 100.0, 1000.0] {
        let xv = x(v);
        let _ = writeln!(
            out,
            r##"<line x1="{xv:.1}" y1="{}" x2="{xv:.1}" y2="{}" stroke="{}" stroke-width="{}"/>"##,
            top - 12.0,
            height - 30.0,
            if v == 1.0 { "#333" } else { "#ddd" },
            if v == 1.0 { 1.5 } else { 1.0 }
        );
        let _ = writeln!(
            out,
            r##"<text x="{xv:.1}" y="{}" text-anchor="middle" fill="#555">{}×</text>"##,
            height - 16.0,
            if v < 1.0 {
                "0.1".to_string()
            } else {
                format!("{v}")
            }
        );
    }
    let mut y = top;
    let mut prev = "";
    for (name, section, adv) in &bars {
        if *section != prev {
            prev = section;
            y += 6.0;
            let _ = writeln!(
                out,
                r#"<text x="10" y="{:.1}" font-weight="bold">{}</text>"#,
                y + 10.0,
                esc(section)
            );
            y += 16.0;
        }
        let (x0, x1) = (x(1.0), x(*adv));
        let (bx, bw) = if x1 >= x0 {
            (x0, x1 - x0)
        } else {
            (x1, x0 - x1)
        };
        let color = if *adv >= 1.0 { "#2e8b57" } else { "#c0392b" };
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            label_w - 8.0,
            y + bar_h * 0.7,
            esc(name)
        );
        let _ = writeln!(
            out,
            r#"<rect x="{bx:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"/>"#,
            y + 2.0,
            bw.max(1.0),
            bar_h - 4.0
        );
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" fill="#333">{}×</text>"##,
            x1.max(x0) + 4.0,
            y + bar_h * 0.7,
            if *adv >= 10.0 {
                format!("{adv:.0}")
            } else {
                format!("{adv:.2}")
            }
        );
        y += bar_h;
    }
    let _ = writeln!(out, "</svg>");
    out
}
