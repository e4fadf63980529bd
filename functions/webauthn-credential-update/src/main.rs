shared::main!(webauthn_credential_update);
