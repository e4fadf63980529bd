//! Outgoing email through Amazon SES. A failed send is logged (never its content) and never
//! fails the request that caused it.
use crate::runtime::Queue;
use aws_sdk_sesv2::types::{Body, Content, Destination, EmailContent, Message};
use std::sync::OnceLock;

#[derive(Debug, Clone)]
pub struct Mailer {
    /// Built when the first message goes out: most requests of most functions send none, and
    /// building a client adds to a cold start.
    client: OnceLock<aws_sdk_sesv2::Client>,
    conf: aws_sdk_sesv2::Config,
    sender: Option<String>,
    /// Messages no response waits for, sent once it has gone out ([`crate::run`]); clones
    /// share it.
    outbox: Queue<Mail>,
}

/// A message waiting in the outbox.
#[derive(Debug)]
struct Mail {
    to: String,
    subject: &'static str,
    text: String,
}

impl Mailer {
    pub fn new(client: aws_sdk_sesv2::Client, sender: Option<String>) -> Self {
        Mailer {
            conf: client.config().clone(),
            client: OnceLock::from(client),
            sender,
            outbox: Queue::default(),
        }
    }

    /// The same mailer with an empty outbox of its own.
    pub fn with_own_outbox(&self) -> Self {
        Mailer {
            outbox: Queue::default(),
            ..self.clone()
        }
    }

    /// The same mailer with an empty outbox of its own, whose client's calls also go through
    /// `interceptor` (tests observe what a function sends).
    pub fn instrumented(
        &self,
        interceptor: impl aws_smithy_runtime_api::client::interceptors::Intercept + 'static,
    ) -> Self {
        Mailer {
            client: OnceLock::new(),
            conf: self.conf.to_builder().interceptor(interceptor).build(),
            sender: self.sender.clone(),
            outbox: Queue::default(),
        }
    }

    /// A mailer whose SES client is built from `sdk` when it first sends.
    pub fn lazy(sdk: &aws_config::SdkConfig, sender: Option<String>) -> Self {
        Mailer {
            client: OnceLock::new(),
            conf: aws_sdk_sesv2::Config::from(sdk),
            sender,
            outbox: Queue::default(),
        }
    }

    fn client(&self) -> &aws_sdk_sesv2::Client {
        self.client
            .get_or_init(|| aws_sdk_sesv2::Client::from_conf(self.conf.clone()))
    }

    /// Whether the deployment sends email at all.
    pub fn enabled(&self) -> bool {
        self.sender.is_some()
    }

    /// Sends a plain-text message; returns whether SES accepted it.
    pub async fn send(&self, to: &str, subject: &str, text: &str) -> bool {
        let Some(sender) = &self.sender else {
            return false;
        };
        let content = |data: &str| Content::builder().data(data).charset("UTF-8").build();
        let (Ok(subject), Ok(text)) = (content(subject), content(text)) else {
            return false;
        };
        let message = Message::builder()
            .subject(subject)
            .body(Body::builder().text(text).build())
            .build();
        let result = self
            .client()
            .send_email()
            .from_email_address(sender)
            .destination(Destination::builder().to_addresses(to).build())
            .content(EmailContent::builder().simple(message).build())
            .send()
            .await;
        match result {
            Ok(_) => true,
            Err(err) => {
                let aws_error =
                    aws_sdk_sesv2::error::ProvideErrorMetadata::code(&err).unwrap_or("transport");
                tracing::warn!(aws_error, "email could not be sent");
                false
            }
        }
    }

    /// Keeps a message for [`Mailer::send_queued`]: for a notice the response does not depend
    /// on, so that the caller does not wait for SES (as PostHog sends these from a task queue).
    pub fn send_after_response(&self, to: &str, subject: &'static str, text: String) {
        if self.enabled() {
            self.outbox.push(Mail {
                to: to.to_string(),
                subject,
                text,
            });
        }
    }

    /// Sends what [`Mailer::send_after_response`] kept; returns how many SES accepted.
    pub async fn send_queued(&self) -> usize {
        let queued = self.outbox.take();
        let mut sent = 0;
        for mail in queued {
            sent += usize::from(self.send(&mail.to, mail.subject, &mail.text).await);
        }
        sent
    }

    /// How many messages wait in the outbox.
    pub fn queued(&self) -> usize {
        self.outbox.len()
    }
}
