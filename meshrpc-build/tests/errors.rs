//! Every manifest mistake fails with `path:LINE:COL: <what is wrong> — <what to write instead>`.
//! Each test pins the whole message in a reviewed snapshot.

use meshrpc_build::{Options, generate};

fn error_of(manifest: &str) -> String {
    let error = generate(manifest, "services.toml", &Options::default())
        .expect_err("the manifest is wrong");
    // Debug must print the same line: build scripts print their error with Debug.
    assert_eq!(format!("{error:?}"), error.to_string());
    error.to_string()
}

/// A valid service around one method entry, to vary the entry.
fn with_method(method: &str) -> String {
    format!("[greeter]\ndoc = \"Greets.\"\n\n[greeter.methods]\n{method}\n")
}

#[test]
fn invalid_toml() {
    insta::assert_snapshot!(error_of("[greeter.methods]\ngreet = { fn = \"greet()\" \n"));
}

#[test]
fn an_unterminated_string() {
    insta::assert_snapshot!(error_of("[greeter.methods]\ngreet = \"greet()\n"));
}

#[test]
fn an_empty_manifest() {
    insta::assert_snapshot!(error_of("# nothing yet\n"));
}

#[test]
fn a_service_without_methods() {
    insta::assert_snapshot!(error_of("[greeter]\ndoc = \"Greets.\"\n"));
}

#[test]
fn an_unknown_service_key_suggests_the_closest() {
    insta::assert_snapshot!(error_of("[greeter]\nmethod = {}\n"));
}

#[test]
fn an_unknown_method_key_suggests_the_closest() {
    insta::assert_snapshot!(error_of(&with_method(
        "greet = { fn = \"greet()\", idempotant = true }"
    )));
}

#[test]
fn an_unknown_type_key_suggests_the_closest() {
    insta::assert_snapshot!(error_of(&format!(
        "{}\n[greeter.types.Card]\nstrukt = \"a: String\"\n",
        with_method("greet = \"greet()\"")
    )));
}

#[test]
fn a_duplicate_method() {
    insta::assert_snapshot!(error_of(&with_method(
        "greet = \"greet()\"\ngreet = \"greet(name: String)\""
    )));
}

#[test]
fn a_duplicate_service() {
    insta::assert_snapshot!(error_of(
        "[greeter]\ndoc = \"a\"\n\n[greeter]\ndoc = \"b\"\n"
    ));
}

#[test]
fn a_signature_that_is_not_rust() {
    insta::assert_snapshot!(error_of(&with_method(
        "greet = { fn = \"greet(name String) -> String\" }"
    )));
}

#[test]
fn a_self_receiver() {
    insta::assert_snapshot!(error_of(&with_method(
        "greet = { fn = \"greet(&self, name: String)\" }"
    )));
}

#[test]
fn a_reference_parameter() {
    insta::assert_snapshot!(error_of(&with_method(
        "greet = { fn = \"greet(name: &str) -> String\" }"
    )));
}

#[test]
fn a_lifetime() {
    insta::assert_snapshot!(error_of(&with_method(
        "greet = { fn = \"greet(names: Vec<Cow<'static, str>>)\" }"
    )));
}

#[test]
fn a_generic_method() {
    insta::assert_snapshot!(error_of(&with_method(
        "greet = { fn = \"greet<T>(name: T)\" }"
    )));
}

#[test]
fn an_impl_trait_parameter() {
    insta::assert_snapshot!(error_of(&with_method(
        "greet = { fn = \"greet(name: impl Display)\" }"
    )));
}

#[test]
fn an_async_signature() {
    insta::assert_snapshot!(error_of(&with_method(
        "greet = { fn = \"async fn greet(name: String)\" }"
    )));
}

#[test]
fn a_pattern_parameter() {
    insta::assert_snapshot!(error_of(&with_method(
        "greet = { fn = \"greet((a, b): (u8, u8))\" }"
    )));
}

#[test]
fn a_mutable_parameter() {
    insta::assert_snapshot!(error_of(&with_method(
        "greet = { fn = \"greet(mut name: String)\" }"
    )));
}

#[test]
fn a_variadic_signature() {
    insta::assert_snapshot!(error_of(&with_method(
        "greet = { fn = \"greet(name: String, ...)\" }"
    )));
}

#[test]
fn a_method_named_like_a_keyword() {
    insta::assert_snapshot!(error_of(&with_method(
        "match = { fn = \"(name: String)\" }"
    )));
}

#[test]
fn a_method_named_like_a_client_method() {
    insta::assert_snapshot!(error_of(&with_method("options = \"options()\"")));
}

#[test]
fn a_parameter_named_like_a_keyword() {
    insta::assert_snapshot!(error_of(&with_method(
        "greet = { fn = \"greet(type: String)\" }"
    )));
}

#[test]
fn an_unknown_type_suggests_a_declared_one() {
    insta::assert_snapshot!(error_of(&format!(
        "{}\n[greeter.types.Postcard]\nstruct = \"to: String\"\n",
        with_method("send = { fn = \"send(card: Postcrad)\" }")
    )));
}

#[test]
fn bytes_inside_a_vector() {
    insta::assert_snapshot!(error_of(&with_method(
        "put = { fn = \"put(blobs: Vec<Bytes>) -> u32\" }"
    )));
}

#[test]
fn an_unknown_type_in_a_declared_struct() {
    insta::assert_snapshot!(error_of(&format!(
        "{}\n[greeter.types.Postcard]\nstruct = \"to: String, sent: Instant\"\n",
        with_method("send = { fn = \"send(card: Postcard)\" }")
    )));
}

#[test]
fn a_result_return_type() {
    insta::assert_snapshot!(error_of(&with_method(
        "greet = { fn = \"greet() -> Result<String, Status>\" }"
    )));
}

#[test]
fn an_idempotent_flag_that_is_not_a_boolean() {
    insta::assert_snapshot!(error_of(&with_method(
        "greet = { fn = \"greet()\", idempotent = \"yes\" }"
    )));
}

#[test]
fn a_timeout_without_a_known_unit() {
    insta::assert_snapshot!(error_of(&with_method(
        "greet = { fn = \"greet()\", timeout = \"soon\" }"
    )));
}

#[test]
fn a_timeout_given_as_a_number() {
    insta::assert_snapshot!(error_of(&with_method(
        "greet = { fn = \"greet()\", timeout = 2 }"
    )));
}

#[test]
fn a_method_key_that_differs_from_the_signature_name() {
    insta::assert_snapshot!(error_of(&with_method(
        "greet = { fn = \"great(name: String)\" }"
    )));
}

#[test]
fn a_service_name_that_is_not_snake_case() {
    insta::assert_snapshot!(error_of("[Greeter.methods]\ngreet = \"greet()\"\n"));
}

#[test]
fn a_use_entry_that_is_not_a_full_path() {
    insta::assert_snapshot!(error_of(
        "[greeter]\nuse = [\"Mood\"]\n\n[greeter.methods]\ngreet = \"greet()\"\n"
    ));
}

#[test]
fn returns_on_a_method_without_result() {
    insta::assert_snapshot!(error_of(&with_method(
        "greet = { fn = \"greet()\", returns = \"message\" }"
    )));
}

#[test]
fn an_attribute_in_a_declared_type() {
    insta::assert_snapshot!(error_of(&format!(
        "{}\n[greeter.types.Card]\nstruct = \"#[serde(rename = \\\"x\\\")] to: String\"\n",
        with_method("greet = \"greet()\"")
    )));
}

#[test]
fn the_same_type_declared_by_two_services() {
    insta::assert_snapshot!(error_of(
        "[a.methods]\nf = \"f()\"\n[a.types.Card]\nstruct = \"x: u8\"\n\n[b.methods]\ng = \"g()\"\n[b.types.Card]\nstruct = \"x: u8\"\n"
    ));
}

#[test]
fn an_unknown_service_in_the_filter() {
    let mut options = Options::default();
    options.services.push("gretter".to_owned());
    let error = generate(
        &with_method("greet = \"greet()\""),
        "services.toml",
        &options,
    )
    .expect_err("unknown");
    insta::assert_snapshot!(error.to_string());
}

#[test]
fn columns_point_inside_the_signature_string() {
    let line = "greet = { fn = \"greet(name: &str) -> String\" }";
    let column = line.find('&').expect("has a reference") + 1;
    let error =
        generate(&with_method(line), "services.toml", &Options::default()).expect_err("reference");
    assert_eq!(error.location(), Some((5, column)));
}

#[test]
fn columns_count_characters_not_bytes() {
    let manifest = "[greeter]\ndoc = \"Grüße\"\n\n[greeter.methods]\ngreet = { doc = \"ü\", fn = \"greet(name: &str)\" }\n";
    let line = "greet = { doc = \"ü\", fn = \"greet(name: &str)\" }";
    let column = line
        .chars()
        .position(|c| c == '&')
        .expect("has a reference")
        + 1;
    let error = generate(manifest, "services.toml", &Options::default()).expect_err("reference");
    assert_eq!(error.location(), Some((5, column)));
}

/// A valid service whose one method takes `item: Item`, around `Item`'s (and others') tables.
fn with_types(types: &str) -> String {
    format!(
        "{}\n{types}",
        with_method("put = { fn = \"put(item: Item) -> Item\" }")
    )
}

#[test]
fn a_struct_body_without_field_names_points_at_newtype() {
    insta::assert_snapshot!(error_of(&with_types(
        "[greeter.types.Item]\nstruct = \"u64\"\n"
    )));
}

#[test]
fn a_struct_body_of_several_types_points_at_tuple() {
    insta::assert_snapshot!(error_of(&with_types(
        "[greeter.types.Item]\nstruct = \"u32, String\"\n"
    )));
}

#[test]
fn a_newtype_of_two_types() {
    insta::assert_snapshot!(error_of(&with_types(
        "[greeter.types.Item]\nnewtype = \"u32, String\"\n"
    )));
}

#[test]
fn a_copy_derive_with_a_string_field() {
    insta::assert_snapshot!(error_of(&with_types(
        "[greeter.types.Item]\nstruct = \"name: String\"\nderive = [\"Copy\"]\n"
    )));
}

#[test]
fn a_hash_derive_with_a_float_field() {
    insta::assert_snapshot!(error_of(&with_types(
        "[greeter.types.Item]\nstruct = \"id: u64, price: f64\"\nderive = [\"Hash\"]\n"
    )));
}

#[test]
fn an_eq_derive_over_a_declared_type_without_it() {
    insta::assert_snapshot!(error_of(&with_types(
        "[greeter.types.Item]\nstruct = \"id: ItemId\"\nderive = [\"Eq\"]\n\n[greeter.types.ItemId]\nnewtype = \"u64\"\n"
    )));
}

#[test]
fn an_ord_derive_without_eq_and_partial_ord() {
    insta::assert_snapshot!(error_of(&with_types(
        "[greeter.types.Item]\nnewtype = \"u64\"\nderive = [\"Ord\"]\n"
    )));
}

#[test]
fn a_derive_that_every_declared_type_has() {
    insta::assert_snapshot!(error_of(&with_types(
        "[greeter.types.Item]\nnewtype = \"u64\"\nderive = [\"Clone\"]\n"
    )));
}

#[test]
fn a_derive_that_is_not_offered() {
    insta::assert_snapshot!(error_of(&with_types(
        "[greeter.types.Item]\nnewtype = \"u64\"\nderive = [\"Hsah\"]\n"
    )));
}

#[test]
fn a_type_that_holds_itself_through_an_option() {
    insta::assert_snapshot!(error_of(&with_types(
        "[greeter.types.Item]\nstruct = \"name: String, next: Option<Item>\"\n"
    )));
}

#[test]
fn two_types_that_hold_each_other() {
    insta::assert_snapshot!(error_of(&with_types(
        "[greeter.types.Item]\nstruct = \"part: Part\"\n\n[greeter.types.Part]\nenum = \"Leaf, Whole(Item)\"\n"
    )));
}

#[test]
fn a_std_path_that_is_not_in_use() {
    insta::assert_snapshot!(error_of(&with_method(
        "wait = { fn = \"wait(how_long: std::time::Duration)\" }"
    )));
}

#[test]
fn a_lowercase_type_name() {
    insta::assert_snapshot!(error_of(&with_method(
        "greet = { fn = \"greet(name: string) -> String\" }"
    )));
}

#[test]
fn a_lowercase_type_name_without_a_close_one() {
    insta::assert_snapshot!(error_of(&with_method(
        "greet = { fn = \"greet(when: instant)\" }"
    )));
}

#[test]
fn a_dyn_companion_name_is_taken() {
    insta::assert_snapshot!(error_of(&format!(
        "{}\n[greeter.types.DynGreeter]\nstruct = \"x: u8\"\n",
        with_method("greet = \"greet()\"")
    )));
}

#[test]
fn a_map_keyed_by_a_declared_struct() {
    insta::assert_snapshot!(error_of(&format!(
        "{}\n[greeter.types.Item]\nstruct = \"id: u64\"\n",
        with_method("count = { fn = \"count(stock: HashMap<Item, u32>)\" }")
    )));
}

#[test]
fn a_map_keyed_by_an_id_without_hash() {
    insta::assert_snapshot!(error_of(&format!(
        "{}\n[greeter.types.ItemId]\nnewtype = \"u64\"\nderive = [\"Eq\"]\n",
        with_method("count = { fn = \"count() -> HashMap<ItemId, u32>\" }")
    )));
}

#[test]
fn a_std_type_by_its_short_name() {
    insta::assert_snapshot!(error_of(&with_method(
        "wait = { fn = \"wait(how_long: Duration)\" }"
    )));
}

#[test]
fn a_stream_inside_a_vector() {
    insta::assert_snapshot!(error_of(&with_method(
        "put = \"put(batches: Vec<Stream<u8>>)\""
    )));
}

#[test]
fn an_optional_stream_result() {
    insta::assert_snapshot!(error_of(&with_method(
        "watch = \"watch(key: String) -> Option<Stream<String>>\""
    )));
}

#[test]
fn a_stream_in_a_declared_type() {
    insta::assert_snapshot!(error_of(&format!(
        "{}\n[greeter.types.Batch]\nstruct = \"items: Stream<u8>\"\n",
        with_method("put = \"put(batch: Batch)\"")
    )));
}

#[test]
fn two_stream_parameters() {
    insta::assert_snapshot!(error_of(&with_method(
        "merge = \"merge(left: Stream<u8>, right: Stream<u8>) -> u32\""
    )));
}

#[test]
fn a_stream_parameter_that_is_not_last() {
    insta::assert_snapshot!(error_of(&with_method(
        "upload = \"upload(chunks: Stream<Bytes>, name: String)\""
    )));
}

#[test]
fn a_stream_of_streams() {
    insta::assert_snapshot!(error_of(&with_method(
        "watch = \"watch() -> Stream<Stream<u64>>\""
    )));
}

#[test]
fn a_stream_of_nothing() {
    insta::assert_snapshot!(error_of(&with_method("ticks = \"ticks() -> Stream<()>\"")));
}

#[test]
fn a_stream_without_its_item_type() {
    insta::assert_snapshot!(error_of(&with_method("ticks = \"ticks() -> Stream\"")));
}

#[test]
fn bytes_inside_a_stream_item() {
    insta::assert_snapshot!(error_of(&with_method(
        "put = \"put(blobs: Stream<Vec<Bytes>>)\""
    )));
}

#[test]
fn an_idempotent_client_stream() {
    insta::assert_snapshot!(error_of(&with_method(
        "sum = { fn = \"sum(numbers: Stream<i64>) -> i64\", idempotent = true }"
    )));
}

#[test]
fn returns_on_a_server_stream() {
    insta::assert_snapshot!(error_of(&with_method(
        "count = { fn = \"count(to: u64) -> Stream<u64>\", returns = \"number\" }"
    )));
}

#[test]
fn a_type_named_stream() {
    insta::assert_snapshot!(error_of(&format!(
        "{}\n[greeter.types.Stream]\nstruct = \"items: Vec<u8>\"\n",
        with_method("put = \"put()\"")
    )));
}
