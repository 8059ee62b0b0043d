//! A person at a browser on oidc-provider's pages, driven over HTTP: follows redirects with
//! cookies and submits each page's form with its hidden fields, signing in (any login) and
//! consenting on the devInteractions pages, until a page has no form left (or, after an abort,
//! the next page).

use std::collections::HashMap;

/// What the person does on the device confirmation page (the one with `confirm`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Approve,
    Abort,
}

/// Opens `start` and answers every page; returns the last page's text.
pub async fn answer_pages(start: &str, answer: Answer) -> String {
    walk(start, answer, None).await
}

/// Opens `start`, signs in and consents, and stops at the redirect to `redirect_uri`, which it
/// opens (tokend's listener) and expects to answer with success; returns that page's text.
pub async fn approve_until_redirect(start: &str, redirect_uri: &str) -> String {
    walk(start, Answer::Approve, Some(redirect_uri)).await
}

async fn walk(start: &str, answer: Answer, redirect_uri: Option<&str>) -> String {
    let http = tokend::testing::http_client();
    let mut cookies: HashMap<String, String> = HashMap::new();
    let mut url = reqwest::Url::parse(start).unwrap();
    let mut form: Option<Vec<(String, String)>> = None;
    let mut aborted = false;
    for _ in 0..30 {
        let cookie = cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let request = match form.take() {
            Some(fields) => http
                .post(url.clone())
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(
                    form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(fields)
                        .finish(),
                ),
            None => http.get(url.clone()),
        };
        let response = request.header("Cookie", cookie).send().await.unwrap();
        for value in response.headers().get_all("set-cookie") {
            let pair = value.to_str().unwrap().split(';').next().unwrap();
            if let Some((k, v)) = pair.split_once('=') {
                cookies.insert(k.to_string(), v.to_string());
            }
        }
        if response.status().is_redirection() {
            let location = response.headers()["location"].to_str().unwrap().to_string();
            url = url.join(&location).unwrap();
            if let Some(redirect_uri) = redirect_uri
                && url.as_str().starts_with(redirect_uri)
            {
                let done = http.get(url).send().await.unwrap();
                assert!(
                    done.status().is_success(),
                    "redirect URI answered {}",
                    done.status()
                );
                return done.text().await.unwrap();
            }
            continue;
        }
        let page = response.text().await.unwrap();
        // After an abort the provider offers to enter a code again: that page is the answer.
        let Some((action, mut fields)) = first_form(&page).filter(|_| !aborted) else {
            return page;
        };
        if page.contains("name=\"password\"") {
            fields.push(("login".into(), "alice".into()));
            fields.push(("password".into(), "any".into()));
        }
        if answer == Answer::Abort && fields.iter().any(|(k, _)| k == "confirm") {
            fields.retain(|(k, _)| k != "confirm");
            fields.push(("abort".into(), "yes".into()));
            aborted = true;
        }
        url = url.join(&action).unwrap();
        form = Some(fields);
    }
    panic!("the provider's pages did not come to an end");
}

/// The first form's action and hidden fields.
fn first_form(page: &str) -> Option<(String, Vec<(String, String)>)> {
    let start = page.find("<form")?;
    let form = &page[start..start + page[start..].find("</form>")?];
    let attr = |tag: &str, name: &str| {
        let key = format!("{name}=\"");
        let at = tag.find(&key)? + key.len();
        Some(tag[at..at + tag[at..].find('"')?].to_string())
    };
    let action = attr(&form[..form.find('>')?], "action")?;
    let fields = form
        .split("<input")
        .skip(1)
        .filter(|tag| tag.contains("type=\"hidden\""))
        .filter_map(|tag| Some((attr(tag, "name")?, attr(tag, "value")?)))
        .collect();
    Some((action, fields))
}
