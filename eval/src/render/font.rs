//! The one font the plots use, found on the host at run time.
//!
//! `plotters` is built with its pure-Rust `ab_glyph` rasteriser instead of its `ttf` feature, so
//! the build needs no fontconfig/freetype; the price is that nothing finds system fonts for us.
//! We look for a TrueType file ourselves (`FLOWSYNTH_FONT` first, then common Debian, Fedora,
//! Arch, Alpine and macOS locations) and register it under a family name of our own. Without one
//! the plots are still drawn, only without any text, and the HTML page says so.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::style::FontStyle;

/// Environment variable naming a `.ttf`/`.otf` file to draw plot text with.
pub const FONT_ENV: &str = "FLOWSYNTH_FONT";

/// Family name the font is registered under. Deliberately not `sans-serif` (plotters' default
/// family): any text drawn without going through [`Typeface`] then fails loudly in tests instead
/// of silently depending on a font that may be missing.
const FAMILY: &str = "flowsynth-plot";

/// Where common systems keep a plain sans-serif TrueType font.
const SYSTEM_FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/ttf-dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/google-noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/noto/NotoSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/System/Library/Fonts/Geneva.ttf",
];

/// A registered font: plot text is drawn with it. Plot code takes `Option<Typeface>`; `None`
/// means "draw no text at all".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Typeface {
    pub(crate) family: &'static str,
}

/// The host's font, looked up and registered once per process (later calls return the same
/// answer). `None` when no candidate file exists or none parses as a font.
pub fn system() -> Option<Typeface> {
    static FOUND: OnceLock<Option<(PathBuf, Typeface)>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let found = register_first(&candidates(std::env::var_os(FONT_ENV)));
            match &found {
                Some((path, _)) => tracing::debug!(font = %path.display(), "plot font"),
                None => tracing::warn!(
                    "no font found for the report plots (set {FONT_ENV} to a .ttf file); \
                     plots are drawn without text"
                ),
            }
            found
        })
        .as_ref()
        .map(|(_, t)| *t)
}

/// The files to try, in order: the one `FLOWSYNTH_FONT` names (if set), then [`SYSTEM_FONTS`].
fn candidates(env: Option<OsString>) -> Vec<PathBuf> {
    env.filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .into_iter()
        .chain(SYSTEM_FONTS.iter().map(PathBuf::from))
        .collect()
}

/// Registers the first candidate that can be read and parsed. The bytes are leaked on purpose:
/// `plotters::style::register_font` needs `'static` data, and [`system`] calls this once per
/// process, so at most one font file (~700 KB) lives until exit.
fn register_first(paths: &[PathBuf]) -> Option<(PathBuf, Typeface)> {
    paths.iter().find_map(|path| {
        let bytes = read_font(path)?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        match plotters::style::register_font(FAMILY, FontStyle::Normal, bytes) {
            Ok(()) => Some((path.clone(), Typeface { family: FAMILY })),
            Err(_) => {
                tracing::warn!(font = %path.display(), "not a usable TrueType/OpenType font, skipped");
                None
            }
        }
    })
}

/// The file's bytes if it exists and starts like a TrueType/OpenType font (checked before
/// leaking anything, so a wrong `FLOWSYNTH_FONT` costs nothing).
fn read_font(path: &Path) -> Option<Vec<u8>> {
    let bytes = std::fs::read(path).ok()?;
    let magic = bytes.get(..4)?;
    let known: [&[u8]; 4] = [b"\x00\x01\x00\x00", b"OTTO", b"true", b"ttcf"];
    known.contains(&magic).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_font_is_tried_before_system_fonts() {
        let c = candidates(Some("/opt/fonts/Mine.ttf".into()));
        assert_eq!(c[0], PathBuf::from("/opt/fonts/Mine.ttf"));
        assert_eq!(c.len(), SYSTEM_FONTS.len() + 1);
        assert_eq!(candidates(Some(OsString::new())).len(), SYSTEM_FONTS.len());
        assert_eq!(candidates(None).len(), SYSTEM_FONTS.len());
    }

    #[test]
    fn missing_and_non_font_files_give_no_typeface() {
        let dir = tempfile::tempdir().expect("temp dir");
        let not_a_font = dir.path().join("fake.ttf");
        std::fs::write(&not_a_font, b"<html>definitely not a font</html>").expect("write");
        let paths = vec![dir.path().join("missing.ttf"), not_a_font];
        assert!(register_first(&paths).is_none());
    }
}
