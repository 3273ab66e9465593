//! The OpenAPI document of the admin API, served at `/v1/openapi.json`: the routes it
//! describes (each handler's `#[utoipa::path]` is beside the handler), the bearer scheme, the
//! error responses every operation can give, and the event types and envelope it names.

use super::*;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hookrelay admin API",
        description = "Manage webhook subscriptions (DESIGN §5). Send `Authorization: Bearer <token>`: \
                       the admin token acts on any account, an account token on its own account only; \
                       another account's resources are 404. Errors are `{\"error\": {\"code\", \"message\"}}`. \
                       Invalid tokens are limited per client address (429 with Retry-After), and every \
                       request ends within api.request_timeout (504). For the platform, hookrelay also \
                       publishes operational events on the AMQP topic exchange `<prefix>.operational` \
                       (routing key = type): `webhook.failing` (25, 50, 75 % of delivery.disable_after \
                       without a success), `webhook.disabled` (reason `gone` or `failing`), \
                       `webhook.recovered`, `delivery.dead_lettered`; an attempt list carries the \
                       webhook's failing period (`failing`)."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "webhooks", description = "An account's webhooks (at most 10, no duplicate URL)"),
        (name = "deliveries", description = "Example events, recent attempts, resending"),
        (name = "tokens", description = "Account tokens, issued by the admin"),
        (name = "event types", description = "The 27 event labels"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Documents, on every operation (applied once the routes are in: see [`documented_routes`]), the errors any request can get whatever its route: a
/// malformed path, query or body, the limits of [`limits`], and a failing store; with a body,
/// also 413 and 415. An operation's own description of a status is kept.
struct CommonErrors;

impl utoipa::Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{Content, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let with_body = operation.request_body.is_some();
                let responses = &mut operation.responses.responses;
                for (status, description) in COMMON_ERRORS {
                    let needs_body = matches!(*status, "413" | "415");
                    if !needs_body || with_body {
                        responses
                            .entry((*status).to_owned())
                            .or_insert_with(|| error(description).into());
                    }
                }
            }
        }
    }
}

const COMMON_ERRORS: &[(&str, &str)] = &[
    ("400", "A malformed path, query string or JSON body"),
    ("401", "No valid token"),
    ("413", "The body is over 16 KiB"),
    ("415", "The body is not declared `application/json`"),
    ("422", "A field or query parameter is invalid"),
    (
        "429",
        "Too many invalid tokens from this client (Retry-After)",
    ),
    ("500", "A stored record could not be read"),
    ("503", "The store is unavailable (Retry-After)"),
    (
        "504",
        "The request did not finish within api.request_timeout",
    ),
];

#[derive(Serialize, ToSchema)]
pub struct EventTypeView {
    #[schema(example = "payment.card.success")]
    pub label: &'static str,
    #[schema(example = "Payment sale with card succeeded")]
    pub description: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct EventTypeList {
    pub event_types: Vec<EventTypeView>,
}

#[utoipa::path(get, path = "/v1/event-types", tag = "event types",
    responses(
        (status = 200, description = "The 27 labels with the dashboard's descriptions", body = EventTypeList),
        (status = 401, description = "No valid token", body = ErrorBody),
    ))]
async fn event_types(_caller: Caller) -> Json<EventTypeList> {
    Json(EventTypeList {
        event_types: EventType::ALL
            .iter()
            .map(|t| EventTypeView {
                label: t.label(),
                description: t.description(),
            })
            .collect(),
    })
}

/// The envelope schema is public: publishers' CI fetches it without an account token.
#[utoipa::path(get, path = "/v1/schemas/envelope.json", tag = "event types", security(()),
    responses(
        (status = 200, description = "The JSON Schema of the event envelope upstream publishes \
            (DESIGN §2), with this deployment's delivery.max_event_bytes and max_event_depth in \
            its x-max-bytes and x-max-depth extension keywords; as docs/asyncapi.yaml and \
            `hookrelay schema envelope`", content_type = "application/schema+json"),
    ))]
async fn envelope_schema(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
) -> Response {
    let limits = crate::event::Limits {
        max_bytes: state.delivery.max_event_bytes,
        max_depth: state.delivery.max_event_depth,
    };
    let schema = crate::event::schema::envelope_schema(limits);
    let mut response = Json(schema).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/schema+json"),
    );
    response
}

/// The routes with their OpenAPI document.
pub(super) fn documented_routes() -> (Router<Arc<AppState>>, utoipa::openapi::OpenApi) {
    let (routes, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(event_types))
        .routes(routes!(envelope_schema))
        .routes(routes!(tokens::whoami))
        .routes(routes!(tokens::issue_token, tokens::list_tokens))
        .routes(routes!(tokens::revoke_token))
        .routes(routes!(webhooks::list_webhooks, webhooks::create_webhook))
        .routes(routes!(
            webhooks::get_webhook,
            webhooks::update_webhook,
            webhooks::delete_webhook
        ))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(deliveries::send_test))
        .routes(routes!(deliveries::list_attempts))
        .routes(routes!(deliveries::resend))
        .routes(routes!(status::account_status_route))
        .split_for_parts();
    let mut doc = doc;
    utoipa::Modify::modify(&CommonErrors, &mut doc);
    (routes, doc)
}

/// `events` as the server takes it: `["*"]` alone, or known labels (repeats are harmless).
fn event_filter_schema(description: &serde_json::Value, nullable: bool) -> serde_json::Value {
    let labels: Vec<&str> = EventType::ALL.iter().map(|t| t.label()).collect();
    let mut choices = vec![
        serde_json::json!({"type": "array", "items": {"type": "string", "enum": ["*"]},
            "minItems": 1, "maxItems": 1}),
        serde_json::json!({"type": "array", "items": {"type": "string", "enum": labels},
            "minItems": 1}),
    ];
    if nullable {
        choices.push(serde_json::json!({"type": "null"}));
    }
    let description = description
        .as_str()
        .unwrap_or("Event labels, or `[\"*\"]` alone");
    serde_json::json!({"description": description, "oneOf": choices,
        "example": ["payment.card.success", "payment.card.failed"]})
}

/// The document as served: what utoipa's annotations cannot say is patched in.
pub(super) fn document_json(doc: &utoipa::openapi::OpenApi) -> String {
    // Plain data: serializing it cannot fail.
    let mut doc = serde_json::to_value(doc).expect("the OpenAPI document serializes");
    for (schema, nullable) in [("CreateWebhook", false), ("UpdateWebhook", true)] {
        let properties = &mut doc["components"]["schemas"][schema]["properties"];
        let events = &mut properties["events"];
        *events = event_filter_schema(&events["description"], nullable);
        // Both are optional: left out or null means the default (create) or unchanged (update).
        properties["format"]["enum"] = serde_json::json!(["standard", "inplayer", null]);
    }
    serde_json::to_string_pretty(&doc).expect("the OpenAPI document serializes")
}
