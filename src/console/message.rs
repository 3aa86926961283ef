//! The message view (`/letters/{id}`): one dead letter's error, replay history, headers and
//! pretty-printed body, with the action panel narrowed to that message.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use super::SharedConsole;
use super::auth;
use super::html::{esc, frame};
use super::page::{actions, top, unavailable};
use crate::dlq::{DeadLetter, Filter};

/// GET /letters/{id}
pub async fn message(
    State(console): State<SharedConsole>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let access = auth::access(&console, &headers, peer);
    let snapshot = match console.snapshot().await {
        Ok(s) => s,
        Err(error) => return unavailable(&error.to_string()),
    };
    let Some(letter) = snapshot.letters.iter().find(|l| l.has_id(&id)) else {
        let body = format!(
            "{}<main><section><p>No dead letter with id <code>{}</code>: it may have been \
             replayed or purged. <a href=\"/\">Back to the overview</a></p></section></main>",
            top(&console.topology.dead(), snapshot.depth, &access),
            esc(&id)
        );
        return (StatusCode::NOT_FOUND, Html(frame("not found", &body))).into_response();
    };
    let only_this = Filter {
        ids: vec![id.clone()],
        ..Filter::default()
    };
    let body = [
        top(&console.topology.dead(), snapshot.depth, &access),
        "<main>".into(),
        details(letter),
        actions(&only_this, &access),
        "</main>".into(),
    ]
    .concat();
    Html(frame(&format!("dead letter {id}"), &body)).into_response()
}

fn details(letter: &DeadLetter) -> String {
    let json = letter.to_json();
    let headers: String = json["headers"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            format!(
                "<tr><td><code>{}</code></td><td>{}</td></tr>",
                esc(k),
                esc(&text)
            )
        })
        .collect();
    let body = serde_json::to_string_pretty(&json["body"]).unwrap_or_default();
    let history: String = letter
        .replay_history()
        .iter()
        .map(|h| format!("<li>{}</li>", esc(h)))
        .collect();
    let history = if history.is_empty() {
        "<p class=\"muted\">never replayed</p>".to_owned()
    } else {
        format!("<ol>{history}</ol>")
    };
    format!(
        "<section><h2>Dead letter {}</h2><p><b>{}</b> at stage <b>{}</b> after {} attempts: \
         <span class=\"err\">{}</span></p></section><section><h2>Replay history</h2>{history}\
         </section><section><h2>Headers</h2><table>{headers}</table></section><section><h2>Body\
         </h2><pre>{}</pre></section>",
        esc(&letter.display_id()),
        esc(&letter.code()),
        esc(&letter.stage()),
        letter.attempts(),
        esc(&letter.error_message()),
        esc(&body)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::letter::tests::letter;

    #[test]
    fn the_view_shows_the_error_headers_body_and_each_replay() {
        let once = DeadLetter {
            properties: letter("timeout", "j1", 5).replay_properties("store <back>"),
            body: br#"{"job_id":"j1"}"#.to_vec(),
        };
        let html = details(&once);
        assert!(html.contains("<code>x-cxrel-job-id</code>"), "{html}");
        assert!(
            html.contains("&quot;job_id&quot;: &quot;j1&quot;"),
            "{html}"
        );
        assert!(
            html.contains("<li>") && html.contains("store &lt;back&gt;"),
            "{html}"
        );
        let never = details(&letter("timeout", "j2", 5));
        assert!(never.contains("never replayed"), "{never}");
    }
}
