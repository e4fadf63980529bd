shared::main!(cancel_email_change_request);
