"""Device enrollment: the gateway's own certificate authority and the protocols devices use
to obtain an identity certificate from it.

* :mod:`mdmgate.enrollment.ca`: the CA (a self-signed root created on first start and kept
  encrypted in the store, or an enterprise's own issuing CA), its checks on certificate
  requests, the device certificates it issues, the CMS it signs;
* :mod:`mdmgate.enrollment.cms`: CMS SignedData: signing with the content attached (signed
  Apple profiles) and verifying detached signatures (Apple's ``Mdm-Signature``);
* :mod:`mdmgate.enrollment.tokens`: enrollment tokens (what an administrator hands out, what
  the store keeps, why one is refused) and stateless one-time SCEP challenges;
* :mod:`mdmgate.enrollment.windows`: Windows enrollment, MS-MDE2 (discovery, MS-XCEP policy,
  MS-WSTEP enrollment and renewal);
* :mod:`mdmgate.enrollment.apple`: Apple enrollment profiles (MDM, SCEP/ACME identity, the
  CA as a root payload);
* :mod:`mdmgate.enrollment.scep`: the SCEP server side (RFC 8894);
* :mod:`mdmgate.enrollment.service`: the service that checks tokens and challenges, issues
  certificates with the CA and records them in the store;
* :mod:`mdmgate.enrollment.settings`: the ``[enrollment]`` configuration table;
* :mod:`mdmgate.enrollment.push_certificate`: the APNs push certificate an administrator
  uploads.

The protocol modules are pure (bytes in, typed values out, and back); the service is where
the store and the clock come in.
"""
