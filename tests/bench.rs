//! The scenario benchmark at a small scale, as CI's smoke test: every tool
//! on every scenario must end with the new tree, and the byte counts must
//! say what InterSync promises where it already promises it. Times are
//! printed, never asserted.

use intersync::bench::{self, Figure, Options, Tool, report};

use crate::util::Dir;

fn figure<'a>(figures: &'a [Figure], scenario: &str, tool: Tool) -> &'a Figure {
    figures
        .iter()
        .find(|f| f.scenario == scenario && f.tool == tool.name())
        .unwrap_or_else(|| panic!("no {scenario} figure for {}", tool.name()))
}

#[test]
fn every_tool_on_every_scenario_at_small_scale() {
    let work = Dir::new();
    let options = Options {
        scale: 0.02,
        runs: 1,
        tools: Tool::ALL.to_vec(),
        scenarios: ["S0", "S1", "S2", "S3", "S4", "S5", "S6", "S7"]
            .map(String::from)
            .to_vec(),
        intersync: env!("CARGO_BIN_EXE_intersync").into(),
        one_way_delay: std::time::Duration::ZERO,
        link: "loopback".into(),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let figures = runtime
        .block_on(bench::run(&work.path(""), &options, |_, _, _| {}))
        .unwrap_or_else(|e| panic!("{e}"));
    let table = report::markdown(&report::Report {
        date: "test".into(),
        machine: report::machine(),
        scale: options.scale,
        runs: options.runs,
        figures: figures.clone(),
    });
    println!("{table}");
    assert_eq!(figures.len(), 8 * Tool::ALL.len());
    let wrong: Vec<_> = figures
        .iter()
        .filter(|f| !f.correct)
        .map(|f| format!("{} {}: {}", f.scenario, f.tool, f.note))
        .collect();
    assert!(wrong.is_empty(), "wrong trees: {wrong:#?}\n{table}");
    for f in &figures {
        assert!(f.down_bytes > 0 || f.scenario == "S7", "{f:?}");
        if let Some((up, down)) = f.tool_bytes {
            // The tools' own counts leave out what they do not see (TCP
            // aside, rsync's daemon greeting); never more than the socket's.
            assert!(up <= f.up_bytes + 64 && down <= f.down_bytes + 64, "{f:?}");
        }
    }
    // What InterSync promises already.
    let noop = figure(&figures, "S7", Tool::Smart);
    assert_eq!(noop.requests, Some(1), "{noop:?}");
    assert!(noop.total_bytes() < 1024, "{noop:?}");
    for tool in [Tool::Smart, Tool::Static] {
        let s1 = figure(&figures, "S1", tool);
        assert!(s1.total_bytes() * 20 < s1.full_fetch_bytes, "{s1:?}");
    }
    let s6 = figure(&figures, "S6", Tool::Smart);
    assert!(s6.total_bytes() < s6.full_fetch_bytes, "{s6:?}");
    // Unrelated data: the signature sent up is all a delta costs over a
    // full fetch (2.2% at this scale, where blocks are small).
    let s4 = figure(&figures, "S4", Tool::Smart);
    assert!(
        s4.total_bytes() < s4.full_fetch_bytes + s4.full_fetch_bytes * 3 / 100,
        "{s4:?}"
    );
}
