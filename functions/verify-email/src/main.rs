shared::main!(verify_email);
