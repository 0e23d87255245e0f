//! Arbitrary bytes into the app inventory reader, alone and as the leaf path and Data of an
//! inventory Results item (so the fuzzer spends its time where the XML scanner works): the
//! answer must be exactly that of the decoder and a walk over its message (the same records
//! or the same error), never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mdmgate_core::syncml::inventory::{app_inventory, records_of_message};
use mdmgate_core::syncml::{decode, Limits};

const HEAD: &[u8] = b"<SyncML xmlns=\"SYNCML:SYNCML1.2\"><SyncHdr><VerDTD>1.2</VerDTD>\
<VerProto>DM/1.2</VerProto><SessionID>1</SessionID><MsgID>2</MsgID><Target><LocURI>s</LocURI>\
</Target><Source><LocURI>d</LocURI></Source></SyncHdr><SyncBody><Results><CmdID>2</CmdID>\
<MsgRef>1</MsgRef><CmdRef>3</CmdRef><Item><Source><LocURI>./Vendor/MSFT/\
EnterpriseModernAppManagement/AppManagement/AppStore/A_1/A_1_x__1/";
const TAIL: &[u8] = b"</Data></Item></Results><Final/></SyncBody></SyncML>";

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let mut framed = HEAD.to_vec();
    framed.extend_from_slice(data);
    framed.extend_from_slice(TAIL);
    for input in [data, framed.as_slice()] {
        for cmd_ref in [None, Some("3")] {
            let expected = decode(input, &limits).map(|m| records_of_message(&m, "", cmd_ref));
            assert_eq!(app_inventory(input, "", cmd_ref, &limits), expected);
        }
    }
});
