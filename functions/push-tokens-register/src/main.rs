shared::main!(push_tokens_register);
