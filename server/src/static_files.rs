//! Serving a built web app from a directory, carefully: no dotfiles (however
//! the path is encoded), nothing outside the directory (symlinks included),
//! `X-Content-Type-Options: nosniff` on every answer, long cache lifetimes
//! for content-hashed assets, and `index.html` for client-side routes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use http::{header, HeaderValue, Method, StatusCode};
use percent_encoding::percent_decode_str;

/// Cache lifetime of assets whose name carries a content hash.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// A handler serving the files under `dir` for `GET` and `HEAD`; install it
/// as your router's fallback:
///
/// ```no_run
/// # fn app(agents: agents_server::Agents) -> std::io::Result<axum::Router> {
/// let app = agents.router().fallback_service(agents_server::static_files("dist")?);
/// # Ok(app) }
/// ```
///
/// A path naming no file gets `index.html` (client-side routes); a path
/// with a segment starting with `.` gets 404, as does anything that would
/// resolve outside `dir`.
///
/// # Errors
/// When `dir` is not a readable directory.
pub fn static_files(dir: impl AsRef<Path>) -> std::io::Result<MethodRouter> {
    let root = Arc::new(dir.as_ref().canonicalize()?);
    if !root.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("{} is not a directory", root.display()),
        ));
    }
    Ok(get(move |request: Request| {
        let root = root.clone();
        async move { serve(&root, request).await }
    }))
}

async fn serve(root: &Path, request: Request) -> Response {
    let Some(relative) = safe_path(request.uri().path()) else {
        return not_found();
    };
    let file = match resolve(root, &relative).await {
        Some(file) => file,
        // Client-side routes: the app's entry page.
        None => match resolve(root, Path::new("index.html")).await {
            Some(index) => index,
            None => return not_found(),
        },
    };
    let Ok(meta) = tokio::fs::metadata(&file).await else {
        return not_found();
    };
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let etag = format!("\"{:x}-{:x}\"", meta.len(), modified);
    let mut response = if request
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else if request.method() == Method::HEAD {
        let mut r = StatusCode::OK.into_response();
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(meta.len()));
        r
    } else {
        match tokio::fs::File::open(&file).await {
            Ok(f) => {
                let body = Body::from_stream(tokio_util::io::ReaderStream::new(f));
                let mut r = Response::new(body);
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(meta.len()));
                r
            }
            Err(_) => return not_found(),
        }
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&file)),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if is_hashed(&file) {
            IMMUTABLE
        } else {
            "no-cache"
        }),
    );
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    response
}

/// The request path as a relative path of plain segments: decoded, without
/// empty segments; `None` when a segment is a dotfile (`.env`, `..`), holds
/// a separator or NUL, or is not UTF-8.
fn safe_path(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        let decoded = percent_decode_str(segment).decode_utf8().ok()?;
        if decoded.starts_with('.') || decoded.contains(['/', '\\', '\0']) || decoded.is_empty() {
            return None;
        }
        out.push(decoded.as_ref());
    }
    Some(out)
}

/// The regular file `relative` names under `root` (a directory's
/// `index.html`), if it exists and, symlinks resolved, stays inside `root`.
async fn resolve(root: &Path, relative: &Path) -> Option<PathBuf> {
    let mut path = tokio::fs::canonicalize(root.join(relative)).await.ok()?;
    if !path.starts_with(root) {
        return None;
    }
    if tokio::fs::metadata(&path).await.ok()?.is_dir() {
        path = tokio::fs::canonicalize(path.join("index.html"))
            .await
            .ok()?;
        if !path.starts_with(root) {
            return None;
        }
    }
    tokio::fs::metadata(&path)
        .await
        .ok()?
        .is_file()
        .then_some(path)
}

fn not_found() -> Response {
    let mut r = (StatusCode::NOT_FOUND, "Not found").into_response();
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("webmanifest") => "application/manifest+json",
        Some("wasm") => "application/wasm",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("ico") => "image/x-icon",
        Some("woff") => "font/woff",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Whether a file name carries a content hash, as bundlers write them
/// (`index-B7x2kQ9a.js`, `app.3f9c2d1e.css`): a last dash- or
/// dot-separated part before the extension of 8 or more characters mixing
/// letters and digits.
fn is_hashed(path: &Path) -> bool {
    let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
        return false;
    };
    let Some(hash) = stem
        .rsplit(['-', '.'])
        .next()
        .filter(|h| h.len() < stem.len())
    else {
        return false;
    };
    hash.len() >= 8
        && hash.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && hash.chars().any(|c| c.is_ascii_digit())
        && hash.chars().any(|c| c.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotfiles_and_escapes_are_refused_however_encoded() {
        for bad in [
            "/.env",
            "/%2Eenv",
            "/%2eenv",
            "/.git/HEAD",
            "/a/../../etc/passwd",
            "/a/%2E%2E/b",
            "/a%2Fb",
            "/a%5Cb",
            "/a%00b",
            "/%FF",
        ] {
            assert_eq!(safe_path(bad), None, "{bad}");
        }
        assert_eq!(
            safe_path("/assets//index-abc.js"),
            Some(PathBuf::from("assets/index-abc.js"))
        );
        assert_eq!(safe_path("/a%20b"), Some(PathBuf::from("a b")));
        assert_eq!(safe_path("/"), Some(PathBuf::new()));
    }

    #[test]
    fn hashed_names() {
        assert!(is_hashed(Path::new("assets/index-B7x2kQ9a.js")));
        assert!(is_hashed(Path::new("app.3f9c2d1e.css")));
        assert!(!is_hashed(Path::new("index.html")));
        assert!(!is_hashed(Path::new("favicon.ico")));
        assert!(!is_hashed(Path::new("my-component.js")));
        assert!(!is_hashed(Path::new("12345678.js")));
    }
}
