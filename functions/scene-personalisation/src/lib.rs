//! `POST /api/users/{uuid}/scene_personalisation/`: choose the dashboard a scene opens.
use serde_json::Value;
use shared::fields::Fields;
use shared::fields::{self, Text};
use shared::lambda_http::{Body, Request, Response};
use shared::{http, ApiError, Context};

shared::endpoint!(personalise);

/// Sets the scene's dashboard (replacing it, or appending a new scene) in one atomic update
/// and returns the target's user object; the parts of it the update does not touch are read
/// beside the update, not after it (one round trip fewer).
async fn personalise(ctx: &Context, req: &Request) -> Result<Response<Body>, ApiError> {
    let call = ctx.authorize(req, FUNCTION).await?;
    let body = http::parse_fields(req)?;
    let scene = fields::text(&body, "scene", Text::not_blank(200))?;
    let dashboard = dashboard(&body)?;
    let dashboard =
        dashboard.ok_or_else(|| ApiError::invalid_input("Dashboard must be provided.", None))?;
    let scene = scene.ok_or_else(|| ApiError::invalid_input("Scene must be provided.", None))?;
    let uuid = call.target.uuid;
    // Both run to the end (a failed read does not cut the write short), the write's outcome
    // first.
    let (user, extras) = tokio::join!(
        ctx.store.set_scene_dashboard(uuid, &scene, dashboard),
        ctx.store.view_extras(uuid),
    );
    let user = user?.ok_or(ApiError::NotFound)?;
    http::ok(&extras?.with(user).to_json())
}

/// The dashboard as DRF's `PrimaryKeyRelatedField` reads it: an integer or a numeric string.
/// This service does not own dashboards, so any positive id exists.
fn dashboard(body: &Fields) -> Result<Option<u64>, ApiError> {
    let attr = Some("dashboard");
    let id: i128 = match body.get("dashboard") {
        None => return Ok(None),
        Some(Value::Null) => {
            return Err(ApiError::validation(
                "null",
                "This field may not be null.",
                attr,
            ))
        }
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {
            n.as_i64().map(i128::from).unwrap_or(i128::MAX)
        }
        Some(Value::String(s))
            if !s.trim().is_empty()
                && s.trim().bytes().all(|b| b.is_ascii_digit() || b == b'-') =>
        {
            s.trim().parse::<i128>().unwrap_or(i128::MAX)
        }
        Some(other) => {
            return Err(ApiError::validation(
                "incorrect_type",
                format!(
                    "Incorrect type. Expected pk value, received {}.",
                    fields::python_type(other)
                ),
                attr,
            ))
        }
    };
    if id < 1 || id > i64::MAX as i128 {
        let shown = match body.get("dashboard") {
            Some(Value::String(s)) => s.trim().to_string(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        return Err(ApiError::validation(
            "does_not_exist",
            format!("Invalid pk \"{shown}\" - object does not exist."),
            attr,
        ));
    }
    Ok(Some(id as u64))
}
