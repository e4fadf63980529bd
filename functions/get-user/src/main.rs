shared::main!(get_user);
