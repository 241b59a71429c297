//! Bar charts as SVG text: enough for a report, with no drawing library to build.

/// Colours for the stacked series, in order (Okabe–Ito, readable by colour-blind people).
/// Callers stack at most this many series (the rest as one "other"), so no two share one.
pub const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#999999",
];

const WIDTH: f64 = 900.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const PLOT_HEIGHT: f64 = 270.0;
/// Width of one character at the 12 px font, roughly.
const CHAR_W: f64 = 7.0;
/// Slope of category labels that do not fit flat (35°).
const TURN_COS: f64 = 0.819;
const TURN_SIN: f64 = 0.574;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A round step for the value axis so about five gridlines cover `max`.
fn nice_step(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    step.max(1.0)
}

/// Vertical bars, one per category, each stacking the series' values (a single series
/// makes plain bars), with a value axis, gridlines, category labels and a legend.
pub fn stacked_bars(title: &str, categories: &[String], series: &[(String, Vec<f64>)]) -> String {
    let totals: Vec<f64> = (0..categories.len())
        .map(|i| {
            series
                .iter()
                .map(|(_, v)| v.get(i).copied().unwrap_or(0.0))
                .sum()
        })
        .collect();
    let max = totals.iter().copied().fold(0.0, f64::max);
    let step = nice_step(max);
    let top_value = (max / step).ceil().max(1.0) * step;
    // Category labels lie flat when every one fits its slot, and all turn otherwise; the
    // margins grow so turned labels are never cut off.
    let longest = categories
        .iter()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(0) as f64;
    let slot_guess = (WIDTH - 60.0 - RIGHT) / categories.len().max(1) as f64;
    let turn = longest * CHAR_W > slot_guess * 0.95;
    let (left, bottom) = if turn {
        (
            (longest * CHAR_W * TURN_COS - slot_guess / 2.0 + 8.0).max(60.0),
            longest * CHAR_W * TURN_SIN + 30.0,
        )
    } else {
        (60.0, 40.0)
    };
    let height = TOP + PLOT_HEIGHT + bottom;
    let plot_w = WIDTH - left - RIGHT;
    let plot_h = PLOT_HEIGHT;
    let y = |v: f64| TOP + plot_h * (1.0 - v / top_value);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"24\" font-size=\"16\" font-weight=\"bold\">{}</text>\n",
        escape(title)
    );
    // Gridlines and the value axis.
    let mut v = 0.0;
    while v <= top_value + step / 2.0 {
        let yy = y(v);
        s += &format!(
            "<line x1=\"{left}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555\">{}</text>\n",
            left + plot_w,
            left - 6.0,
            yy + 4.0,
            v
        );
        v += step;
    }
    if categories.is_empty() || max <= 0.0 {
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">nothing to show</text>\n",
            left + plot_w / 2.0,
            TOP + plot_h / 2.0
        );
    }
    let slot = plot_w / categories.len().max(1) as f64;
    let bar = (slot * 0.7).min(80.0);
    for (i, cat) in categories.iter().enumerate() {
        let x = left + slot * i as f64 + (slot - bar) / 2.0;
        let mut base = 0.0;
        for (k, (name, values)) in series.iter().enumerate() {
            let value = values.get(i).copied().unwrap_or(0.0);
            if value <= 0.0 {
                continue;
            }
            let (y0, y1) = (y(base), y(base + value));
            s += &format!(
                "<rect x=\"{x:.1}\" y=\"{y1:.1}\" width=\"{bar:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {value}</title></rect>\n",
                (y0 - y1).max(0.5),
                PALETTE[k % PALETTE.len()],
                escape(name)
            );
            base += value;
        }
        if totals[i] > 0.0 {
            s += &format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#333\">{}</text>\n",
                x + bar / 2.0,
                y(totals[i]) - 4.0,
                totals[i]
            );
        }
        let lx = x + bar / 2.0;
        let ly = TOP + plot_h + 16.0;
        if turn {
            s += &format!(
                "<text x=\"{lx:.1}\" y=\"{ly:.1}\" text-anchor=\"end\" transform=\"rotate(-35 {lx:.1} {ly:.1})\">{}</text>\n",
                escape(cat)
            );
        } else {
            s += &format!(
                "<text x=\"{lx:.1}\" y=\"{ly:.1}\" text-anchor=\"middle\">{}</text>\n",
                escape(cat)
            );
        }
    }
    s += &format!(
        "<line x1=\"{left}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#333\"/>\n",
        TOP + plot_h,
        left + plot_w,
        TOP + plot_h
    );
    // Legend, for stacks.
    if series.len() > 1 {
        for (k, (name, _)) in series.iter().enumerate().take(20) {
            let ly = TOP + 18.0 * k as f64;
            s += &format!(
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{}\"/>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
                WIDTH - RIGHT + 20.0,
                ly,
                PALETTE[k % PALETTE.len()],
                WIDTH - RIGHT + 38.0,
                ly + 10.0,
                escape(name)
            );
        }
    }
    s += "</svg>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(7.0), 2.0);
        assert_eq!(nice_step(43.0), 10.0);
        assert_eq!(nice_step(120.0), 50.0);
        assert_eq!(nice_step(0.0), 1.0);
    }

    #[test]
    fn bars_stack_to_their_totals() {
        let svg = stacked_bars(
            "t <x>",
            &["a".into(), "b".into()],
            &[("s1".into(), vec![1.0, 2.0]), ("s2".into(), vec![3.0, 0.0])],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("t &lt;x&gt;"));
        // Three non-empty segments, totals 4 and 2 labelled, a legend of two.
        assert_eq!(svg.matches("<title>").count(), 3);
        assert!(svg.contains(">4</text>") && svg.contains(">2</text>"));
        assert!(svg.contains(">s1</text>") && svg.contains(">s2</text>"));
    }
}
