shared::main!(push_tokens_unregister);
