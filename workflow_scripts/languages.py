"""ISO 639-1 language codes accepted in config and wildcards."""

from __future__ import annotations

ISO_639_1: dict[str, str] = dict(
    item.split(":")
    for item in (
        "aa:Afar ab:Abkhazian af:Afrikaans ak:Akan am:Amharic an:Aragonese ar:Arabic "
        "as:Assamese av:Avaric ay:Aymara az:Azerbaijani ba:Bashkir be:Belarusian "
        "bg:Bulgarian bi:Bislama bm:Bambara bn:Bengali bo:Tibetan br:Breton bs:Bosnian "
        "ca:Catalan ce:Chechen ch:Chamorro co:Corsican cr:Cree cs:Czech cu:Church_Slavic "
        "cv:Chuvash cy:Welsh da:Danish de:German dv:Divehi dz:Dzongkha ee:Ewe el:Greek "
        "en:English eo:Esperanto es:Spanish et:Estonian eu:Basque fa:Persian ff:Fulah "
        "fi:Finnish fj:Fijian fo:Faroese fr:French fy:Western_Frisian ga:Irish "
        "gd:Scottish_Gaelic gl:Galician gn:Guarani gu:Gujarati gv:Manx ha:Hausa he:Hebrew "
        "hi:Hindi ho:Hiri_Motu hr:Croatian ht:Haitian hu:Hungarian hy:Armenian ia:Interlingua "
        "id:Indonesian ie:Interlingue ig:Igbo ii:Sichuan_Yi ik:Inupiaq io:Ido is:Icelandic "
        "it:Italian iu:Inuktitut ja:Japanese jv:Javanese ka:Georgian kg:Kongo ki:Kikuyu "
        "kj:Kuanyama kk:Kazakh kl:Kalaallisut km:Khmer kn:Kannada ko:Korean kr:Kanuri "
        "ks:Kashmiri ku:Kurdish kv:Komi kw:Cornish ky:Kyrgyz la:Latin lb:Luxembourgish "
        "lg:Ganda li:Limburgish ln:Lingala lo:Lao lt:Lithuanian lu:Luba-Katanga lv:Latvian "
        "mg:Malagasy mh:Marshallese mi:Maori mk:Macedonian ml:Malayalam mn:Mongolian "
        "mr:Marathi ms:Malay mt:Maltese my:Burmese na:Nauru nb:Norwegian_Bokmal "
        "nd:North_Ndebele ne:Nepali ng:Ndonga nl:Dutch nn:Norwegian_Nynorsk no:Norwegian "
        "nr:South_Ndebele nv:Navajo ny:Chichewa oc:Occitan oj:Ojibwa om:Oromo or:Oriya "
        "os:Ossetian pa:Punjabi pi:Pali pl:Polish ps:Pashto pt:Portuguese qu:Quechua "
        "rm:Romansh rn:Rundi ro:Romanian ru:Russian rw:Kinyarwanda sa:Sanskrit sc:Sardinian "
        "sd:Sindhi se:Northern_Sami sg:Sango si:Sinhala sk:Slovak sl:Slovenian sm:Samoan "
        "sn:Shona so:Somali sq:Albanian sr:Serbian ss:Swati st:Southern_Sotho su:Sundanese "
        "sv:Swedish sw:Swahili ta:Tamil te:Telugu tg:Tajik th:Thai ti:Tigrinya tk:Turkmen "
        "tl:Tagalog tn:Tswana to:Tonga tr:Turkish ts:Tsonga tt:Tatar tw:Twi ty:Tahitian "
        "ug:Uyghur uk:Ukrainian ur:Urdu uz:Uzbek ve:Venda vi:Vietnamese vo:Volapuk "
        "wa:Walloon wo:Wolof xh:Xhosa yi:Yiddish yo:Yoruba za:Zhuang zh:Chinese zu:Zulu"
    ).split()
)


def language_name(code: str) -> str:
    """English name of an ISO 639-1 code (``'fr'`` -> ``'French'``)."""
    return ISO_639_1[check_language(code)].replace("_", " ")


def check_language(code: str) -> str:
    """Return ``code`` if it is an ISO 639-1 code, else raise a clear ``ValueError``."""
    if code not in ISO_639_1:
        raise ValueError(
            f"unknown language code {code!r}: languages are ISO 639-1 codes "
            "(two lowercase letters such as 'en', 'fr', 'zh')"
        )
    return code
