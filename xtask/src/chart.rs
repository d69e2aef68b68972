//! Charts drawn with plotters (SVG backend): one horizontal bar per label (the benchmark), and
//! line panels stacked over one x axis (the autoscaling simulation).

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

/// One bar.
pub struct Bar {
    pub label: String,
    pub value: f64,
}

/// Writes an SVG of horizontal bars with their values, titled, to `path`.
pub fn bars(path: &Path, title: &str, unit: &str, bars: &[Bar]) -> Result<()> {
    let height = 80 + 36 * bars.len() as u32;
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = bars.iter().map(|b| b.value).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(170)
        .build_cartesian_2d(0.0..max, (0..bars.len()).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(unit)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => bars.get(*i).map(|b| b.label.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .draw()?;
    let values = bars.iter().map(|b| b.value).enumerate();
    chart.draw_series(Histogram::horizontal(&chart).style(BLUE.mix(0.6).filled()).margin(4).data(values))?;
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        Text::new(format!("{:.0}", b.value), (b.value, SegmentValue::CenterOf(i)), ("sans-serif", 14))
    }))?;
    root.present()?;
    Ok(())
}

/// Writes an SVG of line panels stacked vertically, one per `(y label, points)`, over one x axis.
pub fn lines(path: &Path, title: &str, x_label: &str, panels: &[(&str, Vec<(f64, f64)>)]) -> Result<()> {
    let root = SVGBackend::new(path, (900, 220 * panels.len() as u32 + 40)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let x_max = panels.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)).fold(1.0, f64::max);
    for ((label, points), area) in panels.iter().zip(root.split_evenly((panels.len(), 1))) {
        let y_max = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(&area)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        chart.configure_mesh().x_desc(x_label).y_desc(*label).draw()?;
        chart.draw_series(LineSeries::new(points.iter().copied(), BLUE.stroke_width(2)))?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bar_is_drawn_with_its_label_and_value() -> Result<()> {
        let path = std::env::temp_dir().join(format!("xtask-chart-{}.svg", std::process::id()));
        let input = [("miss", 7969.0), ("cache-hit", 34900.0)].map(|(l, v)| Bar { label: l.into(), value: v });
        bars(&path, "title", "req/s", &input)?;
        let svg = std::fs::read_to_string(&path)?;
        std::fs::remove_file(&path)?;
        for text in ["title", "miss", "cache-hit", "7969", "34900"] {
            assert!(svg.contains(text), "{text} missing from the chart");
        }
        assert_eq!(svg.matches("opacity=\"0.6\" fill=\"#0000FF\"").count(), 2, "one filled bar per value");
        Ok(())
    }
}
