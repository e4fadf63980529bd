shared::main!(scene_personalisation);
