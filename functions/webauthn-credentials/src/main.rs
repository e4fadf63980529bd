shared::main!(webauthn_credentials);
