//! Export controls (Superset's granular export permissions).
//!
//! Sits in two places on the request path: `authorize` checks the permission a route's
//! declared export needs (a query parameter such as `format=csv`, a JSON field such as
//! `result_format`, or the whole route, e.g. screenshots), and the proxy's
//! `response_filter` classifies what actually comes back, so an upstream that answers a
//! plain request with a CSV download is still stopped before any byte reaches the client.
//!
//! With `exports.granular_export_controls` on (the default), `can_export_data`,
//! `can_export_image` and `can_copy_clipboard` are a hard switch with no `can_csv`
//! fallback. Off, the legacy rule holds: `can_csv` governs data downloads and clipboard
//! copies, and images are not export-controlled.

use serde::{Deserialize, Serialize};

use crate::policy::CompiledPolicy;
use crate::route::RolePermission;

/// What kind of export a request or response is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportKind {
    /// CSV, XLSX, JSON downloads and other data files.
    Data,
    /// Screenshots, thumbnails, PNG and PDF.
    Image,
    /// Copy to clipboard (declared by the operator per route; not visible in responses).
    Clipboard,
}

impl ExportKind {
    pub const ALL: [ExportKind; 3] = [ExportKind::Data, ExportKind::Image, ExportKind::Clipboard];

    pub fn as_str(self) -> &'static str {
        match self {
            ExportKind::Data => "data",
            ExportKind::Image => "image",
            ExportKind::Clipboard => "clipboard",
        }
    }
}

/// `exports:` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Superset's `GRANULAR_EXPORT_CONTROLS`.
    #[serde(default = "default_true")]
    pub granular_export_controls: bool,
    /// The view the export permissions are granted on (`can_export_data on Superset`).
    #[serde(default = "default_view")]
    pub view: String,
    /// Refuse upstream responses that turn out to be exports the caller may not make.
    #[serde(default = "default_true")]
    pub response_guard: bool,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            granular_export_controls: true,
            view: default_view(),
            response_guard: true,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_view() -> String {
    "Superset".to_string()
}

/// The permissions the granular controls introduce, in Superset's names.
pub const EXPORT_DATA: &str = "can_export_data";
pub const EXPORT_IMAGE: &str = "can_export_image";
pub const COPY_CLIPBOARD: &str = "can_copy_clipboard";
pub const LEGACY_CSV: &str = "can_csv";

impl ExportConfig {
    /// The role permission `kind` needs, or `None` when it is not controlled.
    pub fn required_permission(&self, kind: ExportKind) -> Option<RolePermission> {
        let action = if self.granular_export_controls {
            match kind {
                ExportKind::Data => EXPORT_DATA,
                ExportKind::Image => EXPORT_IMAGE,
                ExportKind::Clipboard => COPY_CLIPBOARD,
            }
        } else {
            match kind {
                ExportKind::Data | ExportKind::Clipboard => LEGACY_CSV,
                ExportKind::Image => return None,
            }
        };
        Some(RolePermission {
            action: action.to_string(),
            view: self.view.clone(),
        })
    }

    /// Which exports `subjects` may make under the serving policy.
    pub fn allowance(&self, policy: &CompiledPolicy, subjects: &[String]) -> ExportAllowance {
        let allowed = |kind| {
            self.required_permission(kind).is_none_or(|permission| {
                policy.allows(subjects, &permission.view, &permission.action)
            })
        };
        ExportAllowance {
            data: allowed(ExportKind::Data),
            image: allowed(ExportKind::Image),
            clipboard: allowed(ExportKind::Clipboard),
        }
    }
}

/// Which exports one caller may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExportAllowance {
    pub data: bool,
    pub image: bool,
    pub clipboard: bool,
}

impl ExportAllowance {
    pub fn allows(&self, kind: ExportKind) -> bool {
        match kind {
            ExportKind::Data => self.data,
            ExportKind::Image => self.image,
            ExportKind::Clipboard => self.clipboard,
        }
    }
}

const SPREADSHEET_TYPES: [&str; 5] = [
    "application/vnd.ms-excel",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.oasis.opendocument.spreadsheet",
    "application/x-parquet",
    "application/vnd.apache.parquet",
];

/// What an upstream response is, from its headers: CSV and spreadsheets are data exports;
/// images and PDFs are image exports when served as an attachment (a download) — an
/// inline image is page content, not an export; any other attachment is a data export.
pub fn response_export_kind(
    content_type: Option<&str>,
    content_disposition: Option<&str>,
) -> Option<ExportKind> {
    // Compared without case instead of lowercased into a copy: every proxied response
    // passes here.
    let media_type = content_type
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    let is = |known: &str| media_type.eq_ignore_ascii_case(known);
    if is("text/csv")
        || is("application/csv")
        || is("text/tab-separated-values")
        || SPREADSHEET_TYPES.iter().any(|known| is(known))
    {
        return Some(ExportKind::Data);
    }
    let attachment = content_disposition.is_some_and(|disposition| {
        disposition
            .split(';')
            .next()
            .is_some_and(|kind| kind.trim().eq_ignore_ascii_case("attachment"))
    });
    if !attachment {
        return None;
    }
    // Any other download is an export too: images and PDFs of charts, everything else
    // (JSON, ZIP bundles, unknown types) as data.
    let is_image = media_type
        .get(..6)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("image/"));
    if is_image || is("application/pdf") {
        Some(ExportKind::Image)
    } else {
        Some(ExportKind::Data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granular_controls_have_no_csv_fallback() {
        let granular = ExportConfig::default();
        assert_eq!(
            granular
                .required_permission(ExportKind::Data)
                .unwrap()
                .action,
            "can_export_data"
        );
        assert_eq!(
            granular
                .required_permission(ExportKind::Image)
                .unwrap()
                .action,
            "can_export_image"
        );
        assert_eq!(
            granular
                .required_permission(ExportKind::Clipboard)
                .unwrap()
                .action,
            "can_copy_clipboard"
        );
        let legacy = ExportConfig {
            granular_export_controls: false,
            ..ExportConfig::default()
        };
        assert_eq!(
            legacy.required_permission(ExportKind::Data).unwrap().action,
            "can_csv"
        );
        assert_eq!(
            legacy
                .required_permission(ExportKind::Clipboard)
                .unwrap()
                .action,
            "can_csv"
        );
        assert!(legacy.required_permission(ExportKind::Image).is_none());
    }

    #[test]
    fn responses_are_classified_by_type_and_disposition() {
        assert_eq!(
            response_export_kind(Some("text/csv; charset=utf-8"), None),
            Some(ExportKind::Data)
        );
        assert_eq!(
            response_export_kind(
                Some("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
                None
            ),
            Some(ExportKind::Data)
        );
        assert_eq!(response_export_kind(Some("image/png"), None), None);
        assert_eq!(
            response_export_kind(Some("image/png"), Some("attachment; filename=chart.png")),
            Some(ExportKind::Image)
        );
        assert_eq!(
            response_export_kind(Some("application/pdf"), Some("Attachment")),
            Some(ExportKind::Image)
        );
        assert_eq!(
            response_export_kind(Some("application/pdf"), Some("inline")),
            None
        );
        assert_eq!(response_export_kind(Some("application/json"), None), None);
        assert_eq!(
            response_export_kind(
                Some("application/json"),
                Some("attachment; filename=x.json")
            ),
            Some(ExportKind::Data)
        );
        assert_eq!(
            response_export_kind(None, Some("attachment")),
            Some(ExportKind::Data)
        );
        assert_eq!(response_export_kind(None, None), None);
        // Media types are case-insensitive (RFC 9110 §8.3.1): any spelling is the type.
        for spelling in ["Text/CSV", " TEXT/csv ;q=1", "Application/X-Parquet"] {
            assert_eq!(
                response_export_kind(Some(spelling), None),
                Some(ExportKind::Data),
                "{spelling}"
            );
        }
        assert_eq!(
            response_export_kind(Some("IMAGE/PNG"), Some("attachment")),
            Some(ExportKind::Image)
        );
        assert_eq!(
            response_export_kind(Some("Application/PDF"), Some("attachment")),
            Some(ExportKind::Image)
        );
        // Shorter than the `image/` prefix: no slice past its end.
        assert_eq!(
            response_export_kind(Some("ima"), Some("attachment")),
            Some(ExportKind::Data)
        );
    }
}
