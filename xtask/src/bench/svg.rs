//! Two plain SVG charts, drawn by hand to keep plotting libraries out of xtask:
//! grouped bars on a log scale, and lag-over-time lines on a log scale.

use std::fmt::Write;

const COLORS: [&str; 4] = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a"];
const W: f64 = 900.0;
const H: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 110.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn header(title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        W / 2.0,
        esc(title)
    )
}

/// Log-scale axis: decades between the data's extremes.
struct LogAxis {
    lo: f64,
    hi: f64,
}

impl LogAxis {
    fn new(values: impl Iterator<Item = f64>) -> LogAxis {
        let (mut lo, mut hi) = (f64::MAX, f64::MIN);
        for v in values.filter(|v| *v > 0.0 && v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if lo > hi {
            (lo, hi) = (1.0, 10.0);
        }
        LogAxis {
            lo: 10f64.powf(lo.log10().floor()),
            hi: 10f64.powf(hi.log10().ceil().max(lo.log10().floor() + 1.0)),
        }
    }

    fn y(&self, v: f64) -> f64 {
        let v = v.max(self.lo);
        let f = (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10());
        H - BOTTOM - f * (H - TOP - BOTTOM)
    }

    fn draw(&self, svg: &mut String, label: impl Fn(f64) -> String) {
        let mut d = self.lo;
        while d <= self.hi * 1.001 {
            let y = self.y(d);
            let _ = writeln!(
                svg,
                "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                esc(&label(d))
            );
            d *= 10.0;
        }
    }
}

fn legend(svg: &mut String, series: &[&str]) {
    for (i, name) in series.iter().enumerate() {
        let x = LEFT + 10.0 + i as f64 * 130.0;
        let _ = writeln!(
            svg,
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            H - 22.0,
            COLORS[i % 4],
            x + 16.0,
            H - 12.0,
            esc(name)
        );
    }
}

/// Grouped bars: one group per label, one bar per series; `None` is drawn as a
/// hatched stub marked "n/a" (failed or did not converge).
pub fn bars(
    title: &str,
    labels: &[String],
    series: &[&str],
    values: &[Vec<Option<f64>>],
    unit: impl Fn(f64) -> String,
) -> String {
    let mut svg = header(title);
    let axis = LogAxis::new(values.iter().flatten().flatten().copied());
    axis.draw(&mut svg, &unit);
    let group = (W - LEFT - RIGHT) / labels.len().max(1) as f64;
    let bar = group * 0.8 / series.len().max(1) as f64;
    for (g, label) in labels.iter().enumerate() {
        let gx = LEFT + g as f64 * group + group * 0.1;
        for (s, _) in series.iter().enumerate() {
            let x = gx + s as f64 * bar;
            match values.get(g).and_then(|v| v.get(s)).copied().flatten() {
                Some(v) => {
                    let y = axis.y(v);
                    let _ = writeln!(
                        svg,
                        "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}</title></rect>",
                        bar - 2.0,
                        (H - BOTTOM - y).max(1.0),
                        COLORS[s % 4],
                        esc(&unit(v))
                    );
                }
                None => {
                    let _ = writeln!(
                        svg,
                        "<text x=\"{:.1}\" y=\"{}\" font-size=\"9\" text-anchor=\"middle\">n/a</text>",
                        x + bar / 2.0,
                        H - BOTTOM - 4.0
                    );
                }
            }
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"end\" transform=\"rotate(-25 {:.1} {})\">{}</text>",
            gx + group * 0.4,
            H - BOTTOM + 16.0,
            gx + group * 0.4,
            H - BOTTOM + 16.0,
            esc(label)
        );
    }
    legend(&mut svg, series);
    svg.push_str("</svg>\n");
    svg
}

/// One line per series of (x seconds, y milliseconds) points, y on a log scale.
pub fn lines(title: &str, series: &[(&str, &[(f64, f64)])]) -> String {
    let mut svg = header(title);
    let axis = LogAxis::new(series.iter().flat_map(|(_, p)| p.iter().map(|p| p.1)));
    axis.draw(&mut svg, |v| format!("{v} ms"));
    let x_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.0))
        .fold(1.0f64, f64::max)
        .ceil();
    let x = |t: f64| LEFT + t / x_max * (W - LEFT - RIGHT);
    for t in 0..=(x_max as u64) {
        if x_max <= 12.0 || t % 5 == 0 {
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{t} s</text>",
                x(t as f64),
                H - BOTTOM + 16.0
            );
        }
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">time the marker was written on the master</text>",
        W / 2.0,
        H - BOTTOM + 36.0
    );
    for (i, (_, points)) in series.iter().enumerate() {
        if points.is_empty() {
            continue;
        }
        let path: Vec<String> = points
            .iter()
            .map(|(t, ms)| format!("{:.1},{:.1}", x(*t), axis.y(*ms)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>",
            COLORS[i % 4],
            path.join(" ")
        );
    }
    let names: Vec<&str> = series.iter().map(|(n, _)| *n).collect();
    legend(&mut svg, &names);
    svg.push_str("</svg>\n");
    svg
}
