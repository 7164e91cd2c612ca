//! SVG charts for benchmark reports (plotters' SVG backend: text is left to the viewer, no fonts needed).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

const PALETTE: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plot: {e:?}")
}

/// A bar chart of labelled values.
pub fn bars(path: &Path, title: &str, y_label: &str, values: &[(String, f64)]) -> Result<()> {
    let root = SVGBackend::new(path, (640, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let max = values.iter().map(|v| v.1).fold(0.0, f64::max).max(1e-9) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d((0..values.len()).into_segmented(), 0.0..max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(y_label)
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => values.get(*i).map_or(String::new(), |v| v.0.clone()),
            _ => String::new(),
        })
        .draw()
        .map_err(err)?;
    chart
        .draw_series(values.iter().enumerate().map(|(i, v)| {
            let color = PALETTE[i % PALETTE.len()];
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), v.1),
                ],
                color.filled(),
            );
            bar.set_margin(0, 0, 12, 12);
            bar
        }))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Empirical CDFs of several latency samples (milliseconds).
pub fn cdf(path: &Path, title: &str, x_label: &str, series: &[(String, Vec<f64>)]) -> Result<()> {
    let root = SVGBackend::new(path, (640, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let max = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..max, 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("fraction of requests")
        .draw()
        .map_err(err)?;
    for (i, (name, samples)) in series.iter().enumerate() {
        let mut s = samples.clone();
        s.sort_by(f64::total_cmp);
        let n = s.len().max(1) as f64;
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                s.iter().enumerate().map(|(k, &x)| (x, (k + 1) as f64 / n)),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_written_with_their_labels() {
        let dir = std::env::temp_dir().join(format!("switchyard-plots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let b = dir.join("b.svg");
        bars(
            &b,
            "Accuracy",
            "acc",
            &[("never".into(), 0.2), ("routed".into(), 0.3)],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&b).unwrap();
        assert!(svg.contains("<svg") && svg.contains("routed") && svg.contains("Accuracy"));
        let c = dir.join("c.svg");
        cdf(&c, "Latency", "ms", &[("auto".into(), vec![1.0, 2.0, 3.0])]).unwrap();
        let svg = std::fs::read_to_string(&c).unwrap();
        assert!(svg.contains("auto") && svg.contains("polyline"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
